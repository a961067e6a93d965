"""The AWS CDK app that deploys batchdrop: `cdk synth` / `cdk deploy` from the repository root."""
