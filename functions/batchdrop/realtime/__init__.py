"""The real-time lane: a batch whose requests batchdrop runs itself on the providers' real-time APIs.

A real-time batch is planned, stored and recorded like any other (its files on S3, its item in
DynamoDB), so everything that follows a batch (the poll, completion, resubmission, cancel, the
watchdog) follows it too. What differs is who runs it:

- `lane` sends it: its requests are cut into chunks, one SQS message each, on the real-time queue;
  and it answers for it as a provider answers for a batch (`RealtimeLane`: status, outcomes, cancel).
- `worker` (the `realtime` function, fed by the queue's event source with a cap on concurrent
  invocations) runs a message's chunk: its requests concurrently through the providers' async SDK
  clients, paced by `limiter`, and writes their answers to one file per chunk.

docs/realtime.md says how it is bounded and what a crash may cost.
"""
