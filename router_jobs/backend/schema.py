"""Every Redis key name router-jobs uses, built in one place.

Lua scripts never build key names: they get them in KEYS from here. Keys that one script
touches together share a hash tag (``{...}``) so that they land in one Redis Cluster slot.
See docs/architecture.md for the whole schema.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisSchema:
    """Key names under one namespace prefix (default ``rj``)."""

    ns: str = "rj"

    # -- broker: one hash tag per queue, so a queue's stream, delay set and DLQ share a slot
    def stream(self, queue: str) -> str:
        return f"{self.ns}:{{q:{queue}}}:stream"

    def delayed(self, queue: str) -> str:
        return f"{self.ns}:{{q:{queue}}}:delayed"

    def dead(self, queue: str) -> str:
        return f"{self.ns}:{{q:{queue}}}:dead"

    def starts(self, queue: str) -> str:
        """Hash: entry id -> times a redelivered entry was started (poison detection)."""
        return f"{self.ns}:{{q:{queue}}}:starts"

    def completions(self, queue: str) -> str:
        return f"{self.ns}:{{q:{queue}}}:done"

    def queues(self) -> str:
        return f"{self.ns}:queues"

    def workers(self) -> str:
        """Hash: worker process (consumer name) -> time it finished booting and warming up."""
        return f"{self.ns}:workers"

    def consumers(self) -> str:
        return f"{self.ns}:consumers"

    # -- jobs
    def job(self, job_id: str) -> str:
        return f"{self.ns}:job:{job_id}"

    def job_channel(self, job_id: str) -> str:
        return f"{self.ns}:done:{job_id}"

    def job_events(self, job_id: str) -> str:
        """Stream of a streamed job's events (state, deltas, done/error), with a TTL."""
        return f"{self.ns}:events:{job_id}"  # not under job:*, which SCANs for records

    def idempotency(self, key: str) -> str:
        return f"{self.ns}:idem:{key}"

    def job_pattern(self) -> str:
        """SCAN pattern matching every job record (operators' ``jobs list``)."""
        return f"{self.ns}:job:*"

    # -- batches (``routerctl batch``): one small record per batch run, with a TTL
    def batch(self, batch_id: str) -> str:
        """Hash: input/output paths, counts of done/failed/submitted lines, state, timestamps."""
        return f"{self.ns}:batch:{batch_id}"

    # -- the HTTP gateway: virtual keys, files, batches (all under the hash tag ``{gw}``)
    def gw_tokens(self) -> str:
        """Hash sha256(token) -> virtual key record JSON (the token itself is never stored)."""
        return f"{self.ns}:{{gw}}:tokens"

    def gw_token_ids(self) -> str:
        """Hash token id -> sha256(token): lists and revokes by id."""
        return f"{self.ns}:{{gw}}:token-ids"

    def gw_file(self, file_id: str) -> str:
        """Hash: a stored file's metadata fields and its ``content`` (expires with the file)."""
        return f"{self.ns}:{{gw}}:file:{file_id}"

    def gw_files(self) -> str:
        """Zset file id -> created_at: listing (members whose record expired are dropped on read)."""
        return f"{self.ns}:{{gw}}:files"

    def gw_batch(self, batch_id: str) -> str:
        """Hash: one gateway batch (OpenAI's batch object fields)."""
        return f"{self.ns}:{{gw}}:batch:{batch_id}"

    def gw_batch_results(self, batch_id: str) -> str:
        """Hash line number -> output record JSON (what a resumed driver skips)."""
        return f"{self.ns}:{{gw}}:batch:{batch_id}:results"

    def gw_batches(self) -> str:
        """Zset batch id -> created_at: listing."""
        return f"{self.ns}:{{gw}}:batches"

    def gw_batches_active(self) -> str:
        """Zset batch id -> created_at of batches not yet ended (what drivers look for)."""
        return f"{self.ns}:{{gw}}:batches:active"

    def gw_batch_lease(self, batch_id: str) -> str:
        """String: the gateway process driving this batch now (expires unless renewed)."""
        return f"{self.ns}:{{gw}}:batch:{batch_id}:lease"

    # -- key pool (one hash tag per limit scope)
    def scope(self, scope_id: str) -> str:
        return f"{self.ns}:{{pool:{scope_id}}}"

    # -- conversations
    def conv_messages(self, conv_id: str) -> str:
        return f"{self.ns}:{{conv:{conv_id}}}:messages"

    def conv_meta(self, conv_id: str) -> str:
        return f"{self.ns}:{{conv:{conv_id}}}:meta"

    def conv_applied(self, conv_id: str) -> str:
        """Set of job ids whose turn was already appended (makes appends idempotent)."""
        return f"{self.ns}:{{conv:{conv_id}}}:applied"

    def conv_meta_pattern(self, pattern: str = "*") -> str:
        """SCAN pattern matching the metadata hash of conversations whose id matches ``pattern``."""
        return f"{self.ns}:{{conv:{pattern}}}:meta"

    # -- conversation turn ordering (same hash tag as the conversation)
    def conv_turn_seq(self, conv_id: str) -> str:
        """Counter of turn numbers handed out at submit (INCR)."""
        return f"{self.ns}:{{conv:{conv_id}}}:turn:seq"

    def conv_turn_gate(self, conv_id: str) -> str:
        """Hash: ``done`` (every turn <= done finished), ``since`` (ms, last movement), ``running``."""
        return f"{self.ns}:{{conv:{conv_id}}}:turn:gate"

    def conv_turn_finished(self, conv_id: str) -> str:
        """Set of turn numbers finished ahead of the gate (out of order, e.g. cancelled)."""
        return f"{self.ns}:{{conv:{conv_id}}}:turn:finished"

    # -- submit limits: every bucket under one hash tag so user + global run in one script
    def limits_global(self) -> str:
        return f"{self.ns}:{{limits}}:global"

    def limits_user(self, user_id: str) -> str:
        return f"{self.ns}:{{limits}}:user:{user_id}"

    def limits_overrides(self) -> str:
        """Hash user_id -> ``"<rpm>:<burst>"``: per-user limits that replace the defaults."""
        return f"{self.ns}:{{limits}}:overrides"

    # -- budgets (spend per UTC day, caps)
    def budget_spend(self, day: str) -> str:
        """Hash ``user:<id>`` / ``key:<id>`` / ``model:<name>`` -> USD spent on ``day`` (YYYY-MM-DD)."""
        return f"{self.ns}:{{budget}}:spend:{day}"

    def budget_caps(self) -> str:
        """Hash ``user:<id>`` / ``key:<id>`` -> daily cap in USD."""
        return f"{self.ns}:{{budget}}:caps"
    # -- key pool capacity: everything of one pool shares the hash tag ``{pool:<name>}`` so that
    # reserve.lua / settle.lua / keystate.lua run on Redis Cluster (one slot per pool).
    def pool_part(self, pool: str, part: str) -> str:
        """``<ns>:{pool:<pool>}:<part>``: one key of the pool named ``pool``."""
        return f"{self.scope(pool)}:{part}"

    def pool_joining(self, pool: str) -> str:
        """zset job id -> ms its record was written for the line, until it joins the line."""
        return self.pool_part(pool, "joining")

    def pool_registry(self, pool: str) -> str:
        """hash key_id -> KeyConfig JSON (no secrets)."""
        return self.pool_part(pool, "reg")

    def pool_groups(self, pool: str) -> str:
        """hash group name -> QuotaGroup JSON."""
        return self.pool_part(pool, "greg")

    def pool_spec(self, pool: str) -> str:
        """hash key_id -> compact limits JSON read by the Lua scripts."""
        return self.pool_part(pool, "spec")

    def pool_group_spec(self, pool: str) -> str:
        """hash group name -> compact limits JSON read by the Lua scripts."""
        return self.pool_part(pool, "gspec")

    def pool_version(self, pool: str) -> str:
        """integer bumped on every registry change (workers refresh their cache on change)."""
        return self.pool_part(pool, "ver")

    def pool_models(self, pool: str) -> str:
        """set of model names that have a free/cost index."""
        return self.pool_part(pool, "models")

    def pool_state(self, pool: str) -> str:
        """hash key_id -> JSON state (absent: active)."""
        return self.pool_part(pool, "state")

    def pool_log(self, pool: str) -> str:
        """lex zset: every sliding-window log entry of every scope of the pool."""
        return self.pool_part(pool, "log")

    def pool_sums(self, pool: str) -> str:
        """hash "<scope>\\x1f<window ms>\\x1f" -> "requests tokens input output last_ms"."""
        return self.pool_part(pool, "sums")

    def pool_reservations(self, pool: str) -> str:
        """hash reservation id -> JSON record (idempotency, settle)."""
        return self.pool_part(pool, "res")

    def pool_reservation_expiry(self, pool: str) -> str:
        """zset reservation id -> epoch ms when its record is dropped."""
        return self.pool_part(pool, "rexp")

    def pool_leases(self, pool: str) -> str:
        """zset lease member -> epoch ms when the concurrency lease expires by itself."""
        return self.pool_part(pool, "lease")

    def pool_inflight(self, pool: str) -> str:
        """hash "k:<key_id>" / "g:<group>" -> leases held."""
        return self.pool_part(pool, "inflight")

    def pool_stats(self, pool: str) -> str:
        """hash "<key_id>\\x1f<stat>" -> error/latency EWMAs, overrun counters."""
        return self.pool_part(pool, "stats")

    def pool_free(self, pool: str, model: str) -> str:
        """zset key_id -> earliest epoch ms the key may have room (a lower bound; +inf: unusable)."""
        return self.pool_part(pool, f"free:{model}")

    def pool_cost(self, pool: str, model: str) -> str:
        """zset key_id -> list price (input + output USD per million tokens)."""
        return self.pool_part(pool, f"cost:{model}")

    def key_counters(self, pool: str, key_id: str) -> str:
        """hash "ok:<minute>" / "er:<minute>" -> calls of one key in that minute."""
        return self.pool_part(pool, f"ctr:{key_id}")

    def key_latency(self, pool: str, key_id: str) -> str:
        """list of the key's latest call latencies (ms)."""
        return self.pool_part(pool, f"lat:{key_id}")
