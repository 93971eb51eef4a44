"""A PBFT replica (Castro and Liskov, OSDI 1999) as a sans-IO state machine.

A replica is a frozen ``ReplicaState`` and a pure transition

    step(replica, state, event) -> StepResult(state, sends, timers, decisions, drops, evidence)

where events are ``Deliver`` (bytes from a peer, with the authenticated
channel's sender index), ``Submit`` (a client request) and ``TimerExpired``.
Nothing here does I/O or reads a clock: a simulator or a transport moves the
bytes and fires the timers. ``step`` never mutates its input state.

Protocol, for n >= 4 validators, f = (n - 1) // 3 and q = quorum_size(n):

* Normal case: the primary of view v (v mod n) sends PRE-PREPARE(v, s, value);
  backups check it with the application hook ``ReplicaConfig.validate`` and
  vote PREPARE; q matching prepares (the primary's pre-prepare signature is
  its prepare vote) make (v, s, d) *prepared*; replicas then vote COMMIT; q
  commits make s *committed*, and it is executed (decided) in sequence
  order. Two message patterns: ``all_to_all`` (votes are broadcast; O(n^2)
  messages a phase) and ``linear`` (votes go to the primary, which
  aggregates a quorum into a QC and broadcasts it; O(n) messages a phase).
* Piggybacking (linear pattern, ``ReplicaConfig.piggyback_delay``): a
  message nobody waits on at once (the primary's commit and checkpoint QCs,
  a backup's checkpoint vote) is held while a carrier is expected (another
  request pending or in progress) and rides in a ``Bundle`` on the next
  message to the same destination, as HotStuff chains a QC onto the next
  proposal; a flush timer sends it alone after ``piggyback_delay``. In a
  stream of requests a decision then costs 4(n - 1) messages instead of
  5(n - 1). Holding a message is indistinguishable from a slow link, so
  safety does not depend on it; liveness is kept by the flush timer.
* Checkpoints: every ``checkpoint_interval`` decisions a replica signs its
  state digest; q matching ones (a QC in linear mode) make a stable
  checkpoint, which moves the low watermark and garbage-collects the log.
  Messages for sequences outside (low, low + window] are dropped.
* View change: when a request stays pending past its timer, a replica first
  asks its peers for decisions it may have missed, then sends VIEW-CHANGE
  with its stable checkpoint and a prepare QC for every sequence it
  prepared. The new primary gathers q of them into NEW-VIEW and re-proposes,
  for each sequence above the highest checkpoint, the value prepared in the
  highest view (null where none was): a value prepared by a quorum survives.
  The view-change timer doubles with each consecutive failed view and, as
  in PBFT, runs from the moment q replicas have asked for the view; before
  that quorum a replica re-sends its view change instead of moving further
  (one that timed out alone would otherwise stay ahead of the others for
  ever). f + 1 view changes for higher views make a replica join the
  smallest of them.
* Safety of signing: every vote is recorded in the durable part of the state
  before the message carrying it is returned, and a replica refuses to sign
  a second digest for the same (kind, view, sequence). Durable state
  (``DurableState``, including the pending client requests) survives a
  crash; ``recover`` rebuilds a replica from it.
* Recovery: a restarted replica cannot count on new traffic to learn what
  it missed (it may restart after the last request), so it runs status
  rounds: it broadcasts ``Fetch(last_executed + 1, status=True)``; each peer
  answers with its stable checkpoint certificate, the decision proofs (value
  and commit QC) of a batch it has from there, the proof of its own last
  decision when it has more than the batch, a fetch of its own that says
  where it is, and the NEW-VIEW of its view. Every certificate is verified
  before it is adopted. Recovery ends after a round, not the first, in which
  q - 1 peers answered and the replica learned nothing (proofs/liveness.md,
  step 4). A replica that sees q commit votes for a proposal it never
  received runs the same rounds.
* Bad input (malformed, oversized, wrongly signed, wrong view, outside the
  window, a forged QC) is dropped with a ``Dropped`` record saying why,
  logged at DEBUG level, and never changes the state or raises.

``ReplicaConfig.quorum_fn`` exists only so canary tests can break the quorum
and show that the safety checker notices; production code must leave it at
``quorum_size``.

Layout: ``step`` is one pure transition; the handlers it runs live in
modules named for the sub-machine they implement.

* ``events``: inputs (``Deliver``, ``Submit``, ``TimerExpired``), outputs
  (``Send``, ``SetTimer``, ``Decision``, ``Dropped``), ``StepResult`` and the
  timer names.
* ``config``: ``ReplicaConfig`` (what the replicas of a run agree on) and
  ``Replica`` (one validator's identity).
* ``state``: ``ReplicaState``, its durable part ``DurableState`` and the
  records they hold.
* ``draft``: the copy-on-write draft of the state that one step builds.
* ``context``: ``StepContext``, what every handler shares: the replica, the
  draft, the outputs collected so far, timers, signing, the view gate.
* ``outbox``: held messages and piggybacking (linear pattern).
* ``votes``: vote collection: quorums (batch-verified) and conflicting votes.
* ``normal``: the normal case: requests, pre-prepare, prepare, commit,
  execution, the primary's proposals and linear-mode certificates.
* ``checkpoints``: checkpoints, the stable checkpoint and the window, state
  transfer and recovery rounds.
* ``view_change``: view changes, NEW-VIEW and entering a view.
* ``transition``: ``step``, ``recover``, ``initial_state`` and the event
  dispatch (not named ``step``: the function would shadow the module).

Why mixins and not plain functions: the handlers call each other across
these seams (a commit executes, which checkpoints, which may make a
checkpoint stable, which moves the window and lets the primary propose; a
view change flushes the outbox and re-proposes through the normal case), so
modules of functions would import each other in a cycle. Each seam is a
class over ``StepContext`` that holds only its own methods, and
``transition._Step`` combines them; no method is defined twice, so nothing is
overridden and the order of the bases does not matter.
"""

from .config import ALL_TO_ALL, LINEAR, PATTERNS, Replica, ReplicaConfig
from .events import (
    FLUSH_TIMER,
    RECOVERY_TIMER,
    REQUEST_TIMER,
    VIEW_CHANGE_TIMER,
    Decision,
    Deliver,
    Dropped,
    Event,
    Send,
    SetTimer,
    StepResult,
    Submit,
    TimerExpired,
)
from .state import (
    DURABLE_FIELDS,
    GENESIS_DIGEST,
    Certified,
    DurableState,
    PendingPrePrepare,
    ReplicaState,
    StableCheckpoint,
    VoteRecord,
    durable_state,
)
from .transition import initial_state, recover, step

__all__ = [
    "ALL_TO_ALL",
    "DURABLE_FIELDS",
    "FLUSH_TIMER",
    "GENESIS_DIGEST",
    "LINEAR",
    "PATTERNS",
    "RECOVERY_TIMER",
    "REQUEST_TIMER",
    "VIEW_CHANGE_TIMER",
    "Certified",
    "Decision",
    "Deliver",
    "Dropped",
    "DurableState",
    "Event",
    "PendingPrePrepare",
    "Replica",
    "ReplicaConfig",
    "ReplicaState",
    "Send",
    "SetTimer",
    "StableCheckpoint",
    "StepResult",
    "Submit",
    "TimerExpired",
    "VoteRecord",
    "durable_state",
    "initial_state",
    "recover",
    "step",
]
