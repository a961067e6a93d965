"""Azure OpenAI is not OpenAI: its emulator mode through the official AzureOpenAI client over HTTP, and
batchdrop's Azure client against it (files that must be processed first, the file cap and expiries,
the fail-fast token quota, no expiry past 24 h, created_at as an ISO string)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from batchdrop import models as m
from batchdrop.config import PROVIDER_MAXIMA, ProviderSettings
from batchdrop.local.emulator import EmulatorKnobs, ProviderEmulator
from batchdrop.providers.azure import SPEC as AZURE
from batchdrop.providers.azure.client import AzureOpenAIProvider, FileNotReady
from batchdrop.providers.base import BatchRef
from tests.helpers import START, FakeClock, jsonl, openai_line

API_VERSION = "2024-10-21"
DAY = 24 * 3600


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emulator(clock: FakeClock) -> Iterator[ProviderEmulator]:
    with ProviderEmulator(EmulatorKnobs(latency=60.0, seed=3), clock=clock) as emu:
        yield emu


def azure(emulator: ProviderEmulator, **options: Any) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=emulator.base_url, api_version=API_VERSION, api_key="key", max_retries=0, **options
    )


def provider(emulator: ProviderEmulator) -> AzureOpenAIProvider:
    settings = ProviderSettings(name="azure", limits=PROVIDER_MAXIMA["azure"], base_url=emulator.base_url)
    return AzureOpenAIProvider(settings, client=azure(emulator))


def ref(key: str, requests: int = 1, job: str = "job1") -> BatchRef:
    return BatchRef(job, key, "/v1/chat/completions dep", "dep", requests, intent_at=START)


def write(tmp_path: Any, name: str, lines: list[dict[str, Any]]) -> str:
    path = tmp_path / name
    path.write_bytes(jsonl(lines))
    return str(path)


def test_a_pending_file_cannot_make_a_batch_until_processed(emulator: ProviderEmulator, clock: FakeClock) -> None:
    emulator.azure.file_processing_seconds = 30
    client = azure(emulator)
    file = client.files.create(file=("in.jsonl", jsonl([openai_line("a", model="dep")])), purpose="batch")
    assert file.status == "pending"
    with pytest.raises(openai.BadRequestError, match="pending"):
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    clock.advance(30)
    assert client.files.retrieve(file.id).status == "processed"
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "validating"


def test_the_client_waits_for_the_file_then_creates(tmp_path: Any) -> None:
    # A real clock: the client's polls are real pauses, and the file is processed after 0.3 s.
    with ProviderEmulator(EmulatorKnobs()) as emulator:
        emulator.azure.file_processing_seconds = 0.3
        client = provider(emulator)
        client.file_poll_first = 0.05
        batch_id = client.create(ref("k1"), write(tmp_path, "a.jsonl", [openai_line("a", model="dep")]))
        assert client.status(batch_id).state == m.COMPLETED


def test_a_file_still_pending_holds_the_batch_and_the_next_attempt_reuses_it(
    emulator: ProviderEmulator, clock: FakeClock, tmp_path: Any
) -> None:
    emulator.azure.file_processing_seconds = 600
    client = provider(emulator)
    client.file_wait_seconds = 0.2
    client.file_poll_first = 0.05
    path = write(tmp_path, "a.jsonl", [openai_line("a", model="dep")])
    with pytest.raises(FileNotReady) as raised:
        client.create(ref("k1"), path)
    # "Not now": held and tried again later, never failed.
    assert client.over_quota(raised.value)
    assert not client.refused(raised.value)
    clock.advance(600)
    batch_id = client.create(ref("k1"), path)
    files = list(azure(emulator).files.list(purpose="batch"))
    assert [f.filename for f in files] == ["job1-k1.jsonl"]
    assert azure(emulator).batches.retrieve(batch_id).input_file_id == files[0].id


def test_files_past_the_cap_are_refused_without_expiry(emulator: ProviderEmulator) -> None:
    emulator.azure.max_files = 5  # 500 in Azure; lowered to keep the test quick
    client = azure(emulator)
    for n in range(5):
        client.files.create(file=(f"{n}.jsonl", b"{}\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="limit of 5"):
        client.files.create(file=("6.jsonl", b"{}\n"), purpose="batch")
    # With an expiry the resource takes up to 10,000.
    expiring = client.files.create(
        file=("7.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 1_209_600}
    )
    assert expiring.expires_at == expiring.created_at + 1_209_600


def test_the_cap_is_500_files_by_default(emulator: ProviderEmulator) -> None:
    assert emulator.azure.max_files == 500
    assert emulator.azure.max_files_with_expiry == 10_000
    assert emulator.openai.max_files is None


@pytest.mark.parametrize("seconds", [3600, 1_209_599, 2_592_001])
def test_expiries_outside_azures_range_are_refused(emulator: ProviderEmulator, seconds: int) -> None:
    client = azure(emulator)
    with pytest.raises(openai.BadRequestError, match="between 1209600 and 2592000"):
        client.files.create(
            file=("a.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": seconds}
        )
    file = client.files.create(file=("a.jsonl", jsonl([openai_line("a", model="dep")])), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="output_expires_after"):
        client.batches.create(
            input_file_id=file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": seconds},
        )


def test_expired_files_leave_the_resource(emulator: ProviderEmulator, clock: FakeClock) -> None:
    client = azure(emulator)
    client.files.create(
        file=("a.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 1_209_600}
    )
    clock.advance(1_209_600)
    assert list(client.files.list()) == []


def run_batches(emulator: ProviderEmulator, clock: FakeClock, tmp_path: Any, count: int, cleanup: bool) -> int:
    """Create `count` one-request batches through one Azure resource, each advanced to completed and
    its outcomes read (and its files deleted if `cleanup`): how many were made before the cap."""
    client = provider(emulator)
    path = write(tmp_path, "one.jsonl", [openai_line("a", model="dep")])
    for n in range(count):
        try:
            batch_id = client.create(ref(f"k{n}"), path)
        except openai.BadRequestError as exc:
            if "limit of" not in exc.message:
                raise
            return n
        clock.advance(61)
        status = client.status(batch_id)
        assert status.state == m.COMPLETED
        assert [o.ok for o in client.outcomes(batch_id, status)] == [True]
        if cleanup:
            client.cleanup(batch_id, status)
    return count


def test_cleanup_keeps_a_long_lived_resource_under_the_file_cap(
    emulator: ProviderEmulator, clock: FakeClock, tmp_path: Any
) -> None:
    # Every file the client makes has an expiry, so the cap that applies is the one for such files;
    # lowered to 500 here (10,000 in Azure) to prove, in a few seconds, that cleanup keeps a
    # resource under it for good: 260 batches make 520 files (an input and an output each).
    emulator.azure.max_files_with_expiry = 500
    assert run_batches(emulator, clock, tmp_path, 260, cleanup=True) == 260
    assert list(azure(emulator).files.list()) == []


def test_without_cleanup_the_same_loop_reaches_the_cap(
    emulator: ProviderEmulator, clock: FakeClock, tmp_path: Any
) -> None:
    emulator.azure.max_files_with_expiry = 500
    assert run_batches(emulator, clock, tmp_path, 260, cleanup=False) == 250


def test_cleanup_ignores_files_already_gone(emulator: ProviderEmulator, clock: FakeClock, tmp_path: Any) -> None:
    client = provider(emulator)
    batch_id = client.create(ref("k"), write(tmp_path, "a.jsonl", [openai_line("a", model="dep")]))
    clock.advance(61)
    status = client.status(batch_id)
    client.cleanup(batch_id, status)
    client.cleanup(batch_id, status)
    assert list(azure(emulator).files.list()) == []


def test_files_and_output_carry_the_expiry_the_client_sets(
    emulator: ProviderEmulator, clock: FakeClock, tmp_path: Any
) -> None:
    client = provider(emulator)
    batch_id = client.create(ref("k"), write(tmp_path, "a.jsonl", [openai_line("a", model="dep")]))
    clock.advance(61)
    batch = azure(emulator).batches.retrieve(batch_id)
    for file_id in (batch.input_file_id, batch.output_file_id):
        assert file_id is not None
        file = azure(emulator).files.retrieve(file_id)
        assert file.expires_at == file.created_at + 2_592_000


def test_azure_takes_100000_requests_per_file_and_openai_50000(emulator: ProviderEmulator, clock: FakeClock) -> None:
    assert AZURE.maxima.max_requests == 100_000
    assert emulator.azure.max_requests == 100_000
    assert emulator.openai.max_requests == 50_000
    emulator.azure.max_requests = 3  # the same check, lowered
    client = azure(emulator)
    file = client.files.create(
        file=("in.jsonl", jsonl([openai_line(f"r{i}", model="dep") for i in range(4)])), purpose="batch"
    )
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    clock.advance(60)
    failed = client.batches.retrieve(batch.id)
    assert failed.status == "failed"
    assert failed.errors is not None
    assert [e.code for e in failed.errors.data or []] == ["too_many_tasks"]


def test_the_token_quota_refuses_the_create_fast(emulator: ProviderEmulator, tmp_path: Any) -> None:
    emulator.azure.enqueued_token_limits["dep"] = 10
    client = provider(emulator)
    # "hello" is 2 tokens in the canned count: five of them fill the quota, and the sixth is refused.
    first = client.create(
        ref("k1", 5), write(tmp_path, "a.jsonl", [openai_line(f"r{i}", model="dep") for i in range(5)])
    )
    with pytest.raises(openai.BadRequestError) as raised:
        client.create(ref("k2"), write(tmp_path, "b.jsonl", [openai_line("x", model="dep")]))
    assert raised.value.code == "token_limit_exceeded"
    assert "surpassed the configured limit of 10" in raised.value.message
    assert client.over_quota(raised.value)
    assert not client.refused(raised.value)
    # Another deployment has its own queue; a cancelled batch frees the queue.
    client.create(ref("k3"), write(tmp_path, "c.jsonl", [openai_line("x", model="other")]))
    client.cancel(first)
    client.create(ref("k2"), write(tmp_path, "b.jsonl", [openai_line("x", model="dep")]))


def test_azure_batches_run_past_24_hours_until_cancelled(tmp_path: Any) -> None:
    clock = FakeClock()
    with ProviderEmulator(EmulatorKnobs(latency=3 * DAY, expire_rate=1.0), clock=clock) as emulator:
        client = azure(emulator)
        file = client.files.create(file=("in.jsonl", jsonl([openai_line("a", model="dep")])), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        clock.advance(2 * DAY)
        assert client.batches.retrieve(batch.id).status == "in_progress"
        clock.advance(DAY)
        assert client.batches.retrieve(batch.id).status == "completed"
        # OpenAI, with the same knobs, expires it.
        plain = openai.OpenAI(base_url=emulator.openai_base_url, api_key="k", max_retries=0)
        file = plain.files.create(file=("in.jsonl", jsonl([openai_line("a")])), purpose="batch")
        other = plain.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
        clock.advance(3 * DAY)
        assert plain.batches.retrieve(other.id).status == "expired"


def test_created_at_as_an_iso_string_is_read_by_find(
    emulator: ProviderEmulator, clock: FakeClock, tmp_path: Any
) -> None:
    emulator.azure.iso_created_at = True
    client = provider(emulator)
    batch_id = client.create(ref("k1"), write(tmp_path, "a.jsonl", [openai_line("a", model="dep")]))
    raw = azure(emulator).batches.with_raw_response.retrieve(batch_id).http_response.json()
    assert raw["created_at"].startswith("20")
    assert client.find(ref("k1"), frozenset()) == batch_id
    # A batch created long before our intent ends the search.
    late = BatchRef("job1", "k1", "/v1/chat/completions dep", "dep", 1, intent_at=START + DAY)
    assert client.find(late, frozenset()) is None


def test_azure_and_openai_keep_their_own_files(emulator: ProviderEmulator) -> None:
    azure(emulator).files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    plain = openai.OpenAI(base_url=emulator.openai_base_url, api_key="k", max_retries=0)
    assert list(plain.files.list()) == []
