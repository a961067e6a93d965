"""DynamoDB: jobs and their batches, with a version on every item for optimistic locking.

One table. A job is `pk=JOB#<id>, sk=JOB`; its batches are `pk=JOB#<id>, sk=BATCH#<key>`. Items that
need the poll function's attention carry `due_pk`/`due_at`, which puts them in the sparse `due` index;
an item leaves the index by losing those attributes, so the poll never reads finished work. Beside them:
the registry of provider batch ids we recorded (`pk=PBATCH#<provider>#<id>`), and the create locks of
providers that do not tag their batches (`pk=LOCK#create#<provider>`), and the quota pools that count
what is enqueued at a provider (`pk=QUOTA#<provider>#<pool>`: a total, and each holder's share), and
the monthly spend counters of the budgets (`pk=SPEND#<prefix>, sk=<UTC month>`, docs/budgets.md).

The only module that talks to DynamoDB: the stages go through batchdrop.jobs and batchdrop.batches,
which call this.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from batchdrop.adapters.aws import client
from batchdrop.config import DUE_INDEX, DUE_PK, DUE_SK

DUE = "DUE"
JOB_SK = "JOB"
BATCH_SK = "BATCH#"

_ser = TypeSerializer()
_de = TypeDeserializer()


class Conflict(Exception):
    """Someone else changed the item first (or it is not in the expected state): re-read, don't retry blindly."""


def job_pk(job_id: str) -> str:
    return f"JOB#{job_id}"


def provider_batch_pk(provider: str, batch_id: str) -> str:
    """The registry item that says which of our batches a provider batch id belongs to."""
    return f"PBATCH#{provider}#{batch_id}"


def create_lock_pk(provider: str) -> str:
    return f"LOCK#create#{provider}"


def quota_pk(provider: str, pool: str) -> str:
    return f"QUOTA#{provider}#{pool or '*'}"


QUOTA_SK = "QUOTA"
# A real-time batch's chunks sit under its job, beside its batches (never read with them).
CHUNK_SK = "RTCHUNK#"


def chunk_sk(batch_key: str, chunk: int) -> str:
    return f"{CHUNK_SK}{batch_key}#{chunk:06d}"


def pace_pk(provider: str) -> str:
    return f"PACE#{provider}"


def _to_ddb(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _to_ddb(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_ddb(v) for v in value]
    return value


def _from_ddb(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _from_ddb(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_ddb(v) for v in value]
    return value


def serialize(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _ser.serialize(_to_ddb(v)) for k, v in item.items() if v is not None}


def deserialize(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _from_ddb(_de.deserialize(v)) for k, v in item.items()}


@dataclass
class JobStore:
    table: str
    ddb: Any = None

    def __post_init__(self) -> None:
        if self.ddb is None:
            self.ddb = client("dynamodb")

    # -- reads --------------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        out = self.ddb.get_item(
            TableName=self.table, Key=serialize({"pk": job_pk(job_id), "sk": JOB_SK}), ConsistentRead=True
        )
        return deserialize(out["Item"]) if "Item" in out else None

    def get_batch(self, job_id: str, batch_key: str) -> dict[str, Any] | None:
        out = self.ddb.get_item(
            TableName=self.table,
            Key={"pk": {"S": job_pk(job_id)}, "sk": {"S": f"{BATCH_SK}{batch_key}"}},
            ConsistentRead=True,
        )
        return deserialize(out["Item"]) if "Item" in out else None

    def provider_batch_owner(self, provider: str, batch_id: str) -> str | None:
        """`<job_id>/<batch_key>` of the batch that recorded this provider batch id, if any."""
        item = self.ddb.get_item(
            TableName=self.table,
            Key={"pk": {"S": provider_batch_pk(provider, batch_id)}, "sk": {"S": "PBATCH"}},
            ConsistentRead=True,
        ).get("Item")
        return None if item is None else str(item["owner"]["S"])

    def get_batches(self, job_id: str) -> list[dict[str, Any]]:
        return list(
            self._query(
                KeyConditionExpression="pk = :pk AND begins_with(sk, :b)",
                ExpressionAttributeValues=serialize({":pk": job_pk(job_id), ":b": BATCH_SK}),
                ConsistentRead=True,
            )
        )

    def due(self, now: float, limit: int = 500) -> list[dict[str, Any]]:
        """Items whose next look is due, oldest first: a query on the sparse index, never a scan."""
        items = self._query(
            IndexName=DUE_INDEX,
            KeyConditionExpression="#p = :p AND #s <= :now",
            ExpressionAttributeNames={"#p": DUE_PK, "#s": DUE_SK},
            ExpressionAttributeValues=serialize({":p": DUE, ":now": Decimal(str(round(now, 3)))}),
        )
        out = []
        for item in items:
            out.append(item)
            if len(out) >= limit:
                break
        return out

    def list_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        """For the CLI's status table. A scan, which only an operator's command may afford."""
        out: list[dict[str, Any]] = []
        paginator = self.ddb.get_paginator("scan")
        for page in paginator.paginate(
            TableName=self.table,
            FilterExpression="sk = :j",
            ExpressionAttributeValues=serialize({":j": JOB_SK}),
        ):
            out.extend(deserialize(i) for i in page.get("Items", []))
        out.sort(key=lambda j: j.get("received_at", ""), reverse=True)
        return out[:limit]

    def _query(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        paginator = self.ddb.get_paginator("query")
        for page in paginator.paginate(TableName=self.table, **kwargs):
            for item in page.get("Items", []):
                yield deserialize(item)

    # -- writes -------------------------------------------------------------------------------------

    def create(self, item: dict[str, Any]) -> bool:
        """Put a new item; False (and nothing written) if it exists already."""
        item = {**item, "version": 1}
        try:
            self.ddb.put_item(
                TableName=self.table,
                Item=serialize(item),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def register_provider_batch(self, provider: str, batch_id: str, owner: str) -> bool:
        """Register `batch_id` as `owner`'s (`<job_id>/<batch_key>`); False if another owner has it."""
        try:
            self.ddb.put_item(
                TableName=self.table,
                Item={"pk": {"S": provider_batch_pk(provider, batch_id)}, "sk": {"S": "PBATCH"}, "owner": {"S": owner}},
                ConditionExpression="attribute_not_exists(pk) OR #o = :o",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":o": {"S": owner}},
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def delete(self, item: Mapping[str, Any]) -> None:
        self.ddb.delete_item(TableName=self.table, Key=serialize({"pk": item["pk"], "sk": item["sk"]}))

    def update(
        self,
        item: Mapping[str, Any],
        changes: Mapping[str, Any],
        remove: tuple[str, ...] = (),
        when_status: tuple[str, ...] | None = None,
    ) -> dict[str, Any]:
        """Apply `changes` if the item still has the version we read (and one of `when_status`).

        Returns the item as it now is; raises Conflict if another writer got there first.
        """
        names: dict[str, str] = {"#v": "version"}
        values: dict[str, Any] = {":v": item["version"], ":one": 1}
        sets = ["#v = #v + :one"]
        for i, (k, v) in enumerate(changes.items()):
            if v is None:
                remove = (*remove, k)
                continue
            names[f"#k{i}"] = k
            values[f":c{i}"] = v
            sets.append(f"#k{i} = :c{i}")
        expr = "SET " + ", ".join(sets)
        removes = []
        for i, k in enumerate(dict.fromkeys(remove)):
            names[f"#r{i}"] = k
            removes.append(f"#r{i}")
        if removes:
            expr += " REMOVE " + ", ".join(removes)
        condition = "#v = :v"
        if when_status is not None:
            names["#st"] = "status"
            placeholders = []
            for i, s in enumerate(when_status):
                values[f":s{i}"] = s
                placeholders.append(f":s{i}")
            condition += f" AND #st IN ({', '.join(placeholders)})"
        try:
            out = self.ddb.update_item(
                TableName=self.table,
                Key=serialize({"pk": item["pk"], "sk": item["sk"]}),
                UpdateExpression=expr,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=serialize(values),
                ReturnValues="ALL_NEW",
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            raise Conflict(f"{item['pk']} {item['sk']} changed since version {item['version']}") from None
        return deserialize(out["Attributes"])

    def claim(
        self,
        item: Mapping[str, Any],
        owner: str,
        seconds: float,
        when_status: tuple[str, ...],
        also: Mapping[str, Any] | None = None,
        count: str | None = None,
    ) -> dict[str, Any]:
        """Take the item's lease for `seconds` unless someone else holds an unexpired one, adding one to
        the attribute `count` in the same write (how many times the step was taken up).

        A lease keeps two invocations (a duplicated event, an overlapping retry) from working on the
        same job at once; if its holder dies, the lease runs out and the work can be taken over.
        """
        now = time.time()
        names = {"#l": "lease_until", "#o": "lease_owner", "#st": "status", "#v": "version"}
        values: dict[str, Any] = {
            ":now": Decimal(str(now)),
            ":until": Decimal(str(now + seconds)),
            ":me": owner,
        }
        values[":one"] = 1
        sets = ["#l = :until", "#o = :me", "#v = #v + :one"]
        for i, (k, v) in enumerate((also or {}).items()):
            names[f"#a{i}"] = k
            values[f":a{i}"] = v
            sets.append(f"#a{i} = :a{i}")
        if count is not None:
            names["#c"] = count
            values[":zero"] = 0
            sets.append("#c = if_not_exists(#c, :zero) + :one")
        placeholders = []
        for i, s in enumerate(when_status):
            values[f":s{i}"] = s
            placeholders.append(f":s{i}")
        try:
            out = self.ddb.update_item(
                TableName=self.table,
                Key=serialize({"pk": item["pk"], "sk": item["sk"]}),
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression=(
                    f"#st IN ({', '.join(placeholders)}) AND (attribute_not_exists(#l) OR #l < :now OR #o = :me)"
                ),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=serialize(values),
                ReturnValues="ALL_NEW",
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            raise Conflict(f"{item['pk']} is leased by another invocation or not in {when_status}") from None
        return deserialize(out["Attributes"])

    # -- version-free writes: they never collide with the pipeline's optimistic ones ------------------

    def add_failure(self, job_id: str, stage: str, reason: str) -> None:
        """Keep `reason` as the job's `<stage>_error` and count it in `<stage>_failures`."""
        self.ddb.update_item(
            TableName=self.table,
            Key=serialize({"pk": job_pk(job_id), "sk": JOB_SK}),
            UpdateExpression=f"SET {stage}_error = :r, {stage}_failures = if_not_exists({stage}_failures, :z) + :one",
            ExpressionAttributeValues=serialize({":r": reason, ":z": 0, ":one": 1}),
        )

    def set_if_status(self, job_id: str, sets: Mapping[str, Any], status: str) -> bool:
        """Set `sets` on the job if it is still in `status`; False (nothing written) if not."""
        names = {f"#k{i}": k for i, k in enumerate(sets)} | {"#st": "status"}
        values = {f":v{i}": v for i, v in enumerate(sets.values())} | {":st": status}
        try:
            self.ddb.update_item(
                TableName=self.table,
                Key=serialize({"pk": job_pk(job_id), "sk": JOB_SK}),
                UpdateExpression="SET " + ", ".join(f"#k{i} = :v{i}" for i in range(len(sets))),
                ConditionExpression="#st = :st",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=serialize(values),
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    # -- a provider's create lock (batchdrop.batches serialises creates with it) ----------------------

    def take_lock(self, pk: str, owner: str, seconds: float) -> dict[str, Any]:
        """Take the lock item `pk` unless someone else holds an unexpired one (Conflict); returns what it
        held before (a dead holder's `intent`, if it left one)."""
        now = time.time()
        try:
            out = self.ddb.update_item(
                TableName=self.table,
                Key={"pk": {"S": pk}, "sk": {"S": "LOCK"}},
                UpdateExpression="SET #o = :me, #l = :until",
                ConditionExpression="attribute_not_exists(#o) OR #l < :now OR #o = :me",
                ExpressionAttributeNames={"#o": "owner", "#l": "lease_until"},
                ExpressionAttributeValues={
                    ":me": {"S": owner},
                    ":until": {"N": str(now + seconds)},
                    ":now": {"N": str(now)},
                },
                ReturnValues="ALL_OLD",
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            raise Conflict(f"{pk} is held by another invocation") from None
        return deserialize(out.get("Attributes") or {})

    def set_lock_intent(self, pk: str, owner: str, intent: Mapping[str, Any], seconds: float) -> None:
        """Keep the intent of a create in the lock we hold, which runs `seconds` from now (the create's
        own time, whatever waiting and adopting took before it); fails if we no longer hold it."""
        self.ddb.update_item(
            TableName=self.table,
            Key={"pk": {"S": pk}, "sk": {"S": "LOCK"}},
            UpdateExpression="SET intent = :i, #l = :until",
            ConditionExpression="#o = :me",
            ExpressionAttributeNames={"#o": "owner", "#l": "lease_until"},
            ExpressionAttributeValues=serialize(
                {":i": intent, ":me": owner, ":until": Decimal(str(time.time() + seconds))}
            ),
        )

    def clear_lock_intent(self, pk: str, owner: str) -> None:
        self._if_lock_owner(pk, owner, "REMOVE intent", {})

    def release_lock(self, pk: str, owner: str) -> None:
        """Give the lock up if we hold it; its intent, if any, stays for the next holder."""
        self._if_lock_owner(pk, owner, "REMOVE #o, #l", {"#l": "lease_until"})

    # -- quota pools: what is enqueued at a provider, by holder ----------------------------------------

    def quota(self, pk: str) -> dict[str, Any]:
        """A pool as it is now: {"total": n, "holders": {holder: share}} (empty when nothing holds it)."""
        item = self._quota_item(pk)
        pool = deserialize(item) if item else {}
        return {"total": int(pool.get("total", 0)), "holders": {k: int(v) for k, v in pool.get("holders", {}).items()}}

    def take_quota(self, pk: str, holder: str, share: int, cap: int) -> bool:
        """Add `holder`'s `share` to the pool if it stays within `cap` (or the pool is empty: a share
        larger than the cap goes alone); True if taken, or if `holder` already holds its share (a
        retry). One conditional write: two takers can never both pass the cap."""
        for _ in range(2):
            try:
                self.ddb.update_item(
                    TableName=self.table,
                    Key={"pk": {"S": pk}, "sk": {"S": QUOTA_SK}},
                    UpdateExpression="SET holders.#h = :s ADD #t :s",
                    ConditionExpression="attribute_not_exists(holders.#h) AND (#t = :zero OR #t <= :room)",
                    ExpressionAttributeNames={"#h": holder, "#t": "total"},
                    ExpressionAttributeValues={
                        ":s": {"N": str(share)},
                        ":zero": {"N": "0"},
                        ":room": {"N": str(cap - share)},
                    },
                )
                return True
            except self.ddb.exceptions.ConditionalCheckFailedException:
                item = self._quota_item(pk)
                if item is not None:
                    return holder in (item.get("holders") or {}).get("M", {})
                # The pool's first taker: its item (a total and an empty map to put shares in) first.
                with contextlib.suppress(self.ddb.exceptions.ConditionalCheckFailedException):
                    self.ddb.put_item(
                        TableName=self.table,
                        Item={"pk": {"S": pk}, "sk": {"S": QUOTA_SK}, "total": {"N": "0"}, "holders": {"M": {}}},
                        ConditionExpression="attribute_not_exists(pk)",
                    )
        return False

    def _quota_item(self, pk: str) -> dict[str, Any] | None:
        item: dict[str, Any] | None = self.ddb.get_item(
            TableName=self.table, Key={"pk": {"S": pk}, "sk": {"S": QUOTA_SK}}, ConsistentRead=True
        ).get("Item")
        return item

    def start_prune(self, pk: str, now: float, every: float) -> bool:
        """Mark the pool as being checked for shares left behind, unless it was less than `every` seconds
        ago (or the pool does not exist); True if this caller should check it."""
        try:
            self.ddb.update_item(
                TableName=self.table,
                Key={"pk": {"S": pk}, "sk": {"S": QUOTA_SK}},
                UpdateExpression="SET #p = :now",
                ConditionExpression="attribute_exists(pk) AND (attribute_not_exists(#p) OR #p < :since)",
                ExpressionAttributeNames={"#p": "pruned_at"},
                ExpressionAttributeValues={":now": {"N": str(now)}, ":since": {"N": str(now - every)}},
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def give_back_quota(self, pk: str, holder: str) -> None:
        """Take `holder`'s share out of the pool; nothing if it holds none (given back already)."""
        share = self.quota(pk)["holders"].get(holder)
        if share is None:
            return
        with contextlib.suppress(self.ddb.exceptions.ConditionalCheckFailedException):
            self.ddb.update_item(
                TableName=self.table,
                Key={"pk": {"S": pk}, "sk": {"S": QUOTA_SK}},
                UpdateExpression="REMOVE holders.#h ADD #t :minus",
                ConditionExpression="holders.#h = :s",
                ExpressionAttributeNames={"#h": holder, "#t": "total"},
                ExpressionAttributeValues={":s": {"N": str(share)}, ":minus": {"N": str(-share)}},
            )

    # -- the real-time lane: chunks of a batch, and the lane's measured pace ---------------------------

    def claim_chunk(self, job_id: str, batch_key: str, chunk: int, owner: str, now: float, seconds: float) -> str:
        """Take chunk `chunk` of a real-time batch for `owner` until `now + seconds`: "claimed"; "done" if
        it was finished already (a duplicate message); "busy" while another owner's claim runs. One
        conditional write, so two deliveries of one message never run its requests together."""
        key = {"pk": {"S": job_pk(job_id)}, "sk": {"S": chunk_sk(batch_key, chunk)}}
        try:
            self.ddb.update_item(
                TableName=self.table,
                Key=key,
                UpdateExpression="SET #o = :o, #u = :until ADD #c :one",
                ConditionExpression="attribute_not_exists(#d) AND (attribute_not_exists(#u) OR #u < :now OR #o = :o)",
                ExpressionAttributeNames={"#o": "owner", "#u": "lease_until", "#d": "done", "#c": "claims"},
                ExpressionAttributeValues={
                    ":o": {"S": owner},
                    ":until": {"N": str(now + seconds)},
                    ":now": {"N": str(now)},
                    ":one": {"N": "1"},
                },
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            item = self.ddb.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item") or {}
            return "done" if "done" in item else "busy"
        return "claimed"

    def finish_chunk(self, job_id: str, batch_key: str, chunk: int, owner: str, answered: int) -> bool:
        """Mark the chunk done and count it on its batch, in one transaction (so a crash between the two
        never counts a chunk twice or never); False if `owner`'s claim was lost meanwhile."""
        try:
            self.ddb.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": {"pk": {"S": job_pk(job_id)}, "sk": {"S": chunk_sk(batch_key, chunk)}},
                            "UpdateExpression": "SET #d = :t REMOVE #u",
                            "ConditionExpression": "#o = :o AND attribute_not_exists(#d)",
                            "ExpressionAttributeNames": {"#d": "done", "#o": "owner", "#u": "lease_until"},
                            "ExpressionAttributeValues": {":t": {"BOOL": True}, ":o": {"S": owner}},
                        }
                    },
                    {
                        # Not the batch's version: the pipeline's own writes of it never collide with a count.
                        "Update": {
                            "TableName": self.table,
                            "Key": {"pk": {"S": job_pk(job_id)}, "sk": {"S": f"{BATCH_SK}{batch_key}"}},
                            "UpdateExpression": "ADD #c :one, #r :n",
                            "ConditionExpression": "attribute_exists(pk)",
                            "ExpressionAttributeNames": {"#c": "chunks_done", "#r": "requests_done"},
                            "ExpressionAttributeValues": {":one": {"N": "1"}, ":n": {"N": str(answered)}},
                        }
                    },
                ]
            )
        except self.ddb.exceptions.TransactionCanceledException:
            return False
        return True

    def chunks_done(self, job_id: str, batch_key: str) -> set[int]:
        """The numbers of a real-time batch's chunks that are done."""
        done: set[int] = set()
        for item in self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :c)",
            ExpressionAttributeValues=serialize({":pk": job_pk(job_id), ":c": f"{CHUNK_SK}{batch_key}#"}),
            ConsistentRead=True,
        ):
            if item.get("done"):
                done.add(int(str(item["sk"]).rpartition("#")[2]))
        return done

    def release_chunk(self, job_id: str, batch_key: str, chunk: int, owner: str) -> None:
        """Give an unfinished chunk back at once, for its message's next delivery."""
        with contextlib.suppress(self.ddb.exceptions.ConditionalCheckFailedException):
            self.ddb.update_item(
                TableName=self.table,
                Key={"pk": {"S": job_pk(job_id)}, "sk": {"S": chunk_sk(batch_key, chunk)}},
                UpdateExpression="REMOVE #u",
                ConditionExpression="#o = :o",
                ExpressionAttributeNames={"#o": "owner", "#u": "lease_until"},
                ExpressionAttributeValues={":o": {"S": owner}},
            )

    def lane_pace(self, provider: str) -> float | None:
        """The requests per second one real-time invocation last sustained for the provider (None: none
        ran yet)."""
        item = self.ddb.get_item(TableName=self.table, Key={"pk": {"S": pace_pk(provider)}, "sk": {"S": "PACE"}}).get(
            "Item"
        )
        return float(item["rate"]["N"]) if item and "rate" in item else None

    def record_lane_pace(self, provider: str, rate: float, now: float) -> None:
        """Last writer wins: an estimate, read by the poll's escalation."""
        self.ddb.put_item(
            TableName=self.table,
            Item={
                "pk": {"S": pace_pk(provider)},
                "sk": {"S": "PACE"},
                "rate": {"N": str(round(rate, 4))},
                "at": {"N": str(round(now, 3))},
            },
        )

    def _if_lock_owner(self, pk: str, owner: str, expression: str, names: dict[str, str]) -> None:
        with contextlib.suppress(self.ddb.exceptions.ConditionalCheckFailedException):
            self.ddb.update_item(
                TableName=self.table,
                Key={"pk": {"S": pk}, "sk": {"S": "LOCK"}},
                UpdateExpression=expression,
                ConditionExpression="#o = :me",
                ExpressionAttributeNames={"#o": "owner", **names},
                ExpressionAttributeValues={":me": {"S": owner}},
            )


def set_flag(store: JobStore, item: Mapping[str, Any], name: str, value: Any = True) -> None:
    """Set `name` on the item without touching its version, so it never collides with the pipeline's
    optimistic writes (like a cancel request)."""
    store.ddb.update_item(
        TableName=store.table,
        Key=serialize({"pk": item["pk"], "sk": item["sk"]}),
        UpdateExpression="SET #f = :t",
        ExpressionAttributeNames={"#f": name},
        ExpressionAttributeValues=serialize({":t": value}),
    )


def reserve(store: JobStore, item: Mapping[str, Any], name: str, unless: tuple[str, ...], seconds: float) -> bool:
    """Take a short, version-free reservation `name` on the item, unless one of the attributes `unless`
    is set or someone else's reservation is still running; True if taken. What makes a one-off side
    effect (a notification) happen once even when two invocations reach it together."""
    now = time.time()
    names = {"#r": name} | {f"#u{i}": flag for i, flag in enumerate(unless)}
    condition = " AND ".join(
        [*(f"attribute_not_exists(#u{i})" for i in range(len(unless))), "(attribute_not_exists(#r) OR #r < :now)"]
    )
    try:
        store.ddb.update_item(
            TableName=store.table,
            Key=serialize({"pk": item["pk"], "sk": item["sk"]}),
            UpdateExpression="SET #r = :until",
            ConditionExpression=condition,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=serialize({":now": Decimal(str(now)), ":until": Decimal(str(now + seconds))}),
        )
    except store.ddb.exceptions.ConditionalCheckFailedException:
        return False
    return True


def release(store: JobStore, item: Mapping[str, Any], owner: str) -> None:
    """Give up our lease (after a failure) so a retry can take the work over at once."""
    with contextlib.suppress(store.ddb.exceptions.ConditionalCheckFailedException):
        store.ddb.update_item(
            TableName=store.table,
            Key=serialize({"pk": item["pk"], "sk": item["sk"]}),
            UpdateExpression="REMOVE lease_owner, lease_until SET #v = #v + :one",
            ConditionExpression="lease_owner = :me",
            ExpressionAttributeNames={"#v": "version"},
            ExpressionAttributeValues=serialize({":me": owner, ":one": 1}),
        )


def due_fields(at: float) -> dict[str, Any]:
    """The attributes that put an item in the sparse `due` index, to be looked at from `at` on."""
    return {DUE_PK: DUE, DUE_SK: Decimal(str(round(at, 3)))}


NOT_DUE = (DUE_PK, DUE_SK)


# -- monthly spend: one counter item per cap and UTC month (docs/budgets.md) ---------------------------

SPEND_PK = "SPEND#"
# What a counter holds: `committed` (reserved + spent: what the cap is checked against, kept as one
# attribute because a condition cannot add two), `reserved` (the estimates of jobs still running) and
# `spent` (the costs jobs reported), all USD as exact decimals; `jobs`, how many reported.
SPEND_FIELDS = ("committed", "reserved", "spent")


def spend_pk(prefix: str) -> str:
    """The counter of the cap on keys under `prefix` ("" for the stack's cap on every file)."""
    return f"{SPEND_PK}{prefix or '*'}"


class OverCap(Exception):
    """A reservation did not fit: `index` is the cap (in the order given) with no room left, or None
    when the job had reserved already."""

    def __init__(self, index: int | None) -> None:
        super().__init__(f"cap {index} has no room" if index is not None else "reserved already")
        self.index = index


def spend(store: JobStore, prefix: str, month: str) -> dict[str, Decimal]:
    """A cap's counter for `month` as it is now (zeros when nothing was reserved yet)."""
    item = (
        store.ddb.get_item(
            TableName=store.table, Key={"pk": {"S": spend_pk(prefix)}, "sk": {"S": month}}, ConsistentRead=True
        ).get("Item")
        or {}
    )
    return {name: Decimal(item[name]["N"]) if name in item else Decimal(0) for name in SPEND_FIELDS}


def reserve_spend(
    store: JobStore,
    job_id: str,
    marker: Mapping[str, Any],
    month: str,
    caps: list[tuple[str, Decimal]],
    amount: Decimal,
) -> None:
    """Add `amount` to the reservation of every cap's counter for `month` if each stays within its cap,
    and keep `marker` on the job as `budget_reserved`, in one transaction: either every counter and the
    job change, or none. Conditional on the job not holding a reservation yet, so a re-run never
    reserves twice (OverCap(None)); OverCap(i) when cap i has no room. Version-free on the job, like a
    flag, so it never collides with the pipeline's optimistic writes."""
    items: list[dict[str, Any]] = [
        {
            "Update": {
                "TableName": store.table,
                "Key": serialize({"pk": job_pk(job_id), "sk": JOB_SK}),
                "UpdateExpression": "SET #m = :m",
                "ConditionExpression": "attribute_not_exists(#m) AND #st = :submitting",
                "ExpressionAttributeNames": {"#m": "budget_reserved", "#st": "status"},
                "ExpressionAttributeValues": serialize({":m": dict(marker), ":submitting": "submitting"}),
            }
        }
    ]
    for prefix, cap in caps:
        items.append(
            {
                "Update": {
                    "TableName": store.table,
                    "Key": {"pk": {"S": spend_pk(prefix)}, "sk": {"S": month}},
                    "UpdateExpression": "ADD #c :a, #r :a SET #cap = :cap",
                    "ConditionExpression": "attribute_not_exists(#c) OR #c <= :room",
                    "ExpressionAttributeNames": {"#c": "committed", "#r": "reserved", "#cap": "cap"},
                    "ExpressionAttributeValues": {
                        ":a": {"N": str(amount)},
                        ":cap": {"N": str(cap)},
                        ":room": {"N": str(cap - amount)},
                    },
                }
            }
        )
    try:
        store.ddb.transact_write_items(TransactItems=items)
    except store.ddb.exceptions.TransactionCanceledException as exc:
        reasons = [r.get("Code") for r in exc.response.get("CancellationReasons") or []]
        if reasons and reasons[0] == "ConditionalCheckFailed":
            raise OverCap(None) from None
        failed = [i - 1 for i, code in enumerate(reasons) if code == "ConditionalCheckFailed" and i > 0]
        if failed:
            raise OverCap(failed[0]) from None
        raise


def record_spend(
    store: JobStore, job_id: str, month: str, prefixes: list[str], reserved: Decimal, spent: Decimal
) -> bool:
    """Move the job's reservation to what it spent on every cap's counter for `month`, and mark the job
    `budget_spent`, in one transaction conditional on the job's reservation not yet being settled: once
    per job, whatever re-runs. No condition on the caps: what was spent was spent. False if settled
    already."""
    items: list[dict[str, Any]] = [
        {
            "Update": {
                "TableName": store.table,
                "Key": serialize({"pk": job_pk(job_id), "sk": JOB_SK}),
                "UpdateExpression": "SET #s = :s",
                "ConditionExpression": "attribute_exists(#m) AND attribute_not_exists(#s)",
                "ExpressionAttributeNames": {"#m": "budget_reserved", "#s": "budget_spent"},
                "ExpressionAttributeValues": serialize({":s": spent}),
            }
        }
    ]
    for prefix in prefixes:
        items.append(
            {
                "Update": {
                    "TableName": store.table,
                    "Key": {"pk": {"S": spend_pk(prefix)}, "sk": {"S": month}},
                    "UpdateExpression": "ADD #c :moved, #r :unreserve, #s :spent, #j :one",
                    "ExpressionAttributeNames": {"#c": "committed", "#r": "reserved", "#s": "spent", "#j": "jobs"},
                    "ExpressionAttributeValues": {
                        ":moved": {"N": str(spent - reserved)},
                        ":unreserve": {"N": str(-reserved)},
                        ":spent": {"N": str(spent)},
                        ":one": {"N": "1"},
                    },
                }
            }
        )
    try:
        store.ddb.transact_write_items(TransactItems=items)
    except store.ddb.exceptions.TransactionCanceledException as exc:
        reasons = [r.get("Code") for r in exc.response.get("CancellationReasons") or []]
        if not reasons or reasons[0] == "ConditionalCheckFailed":
            return False
        raise
    return True
