// Package saga is the workflow engine behind SagaService: the guide's "Workflow Engine
// & Saga Pattern". Actions run in the application's workers; the engine keeps each
// saga's state in PostgreSQL (internal/store/saga.go), hands out tasks, times out
// attempts, retries, compensates and writes the saga's events.
//
// # States
//
// A saga is RUNNING from StartSaga, with its steps run one at a time, in order. It ends
// COMPLETED when its last step completes. Each completed step's output (a JSON object)
// is laid over the context (top-level keys), so later steps see it.
//
// An attempt fails when its worker calls FailTask or when it is not answered before its
// deadline (the step's timeout_seconds after a worker took it): a timeout counts as a
// retryable failure. A failed attempt is retried after the retry policy's backoff (with
// jitter) until max_attempts; FailTask with non_retryable fails the step at once. A
// step that fails for good stops forward execution: the saga becomes COMPENSATING and
// the compensations run one at a time in reverse order, starting with the failed
// step's own (it may have half-done its work; its input is empty) and then each
// completed step's (its input is the step's output: the guide's
// cancel_admission(context, output_data)). Steps without a compensation action are
// passed over. When the last one is done the saga ends COMPENSATED. A compensation is
// retried like an action; one that fails for good ends the saga FAILED, with
// error_type, error_message and failed_step saying why, and the compensations of the
// steps before it not run: an operator decides. Without enable_compensation, a failed
// step ends the saga FAILED at once.
//
// CancelSaga on a RUNNING saga: a step whose task is waiting for a worker is taken back
// (SKIPPED if no attempt of it ever ran; otherwise FAILED, and compensated like a failed
// step); a step a worker is running is left to answer or time out (not retried) and is
// then compensated too, with its output if it completed. The saga ends CANCELLED (or
// FAILED when a compensation fails). A repeated cancel changes nothing; a saga that
// ended, or that is compensating after a failure, cannot be cancelled.
//
// The transitions are computed by Machine, which does no I/O; testdata/*.golden holds
// every transition of a set of scenarios.
//
// # Durability
//
// Every state change is one transaction: it locks the saga's row (so changes of one
// saga are serialized, and its transaction id, from which event positions are made, is
// taken there), then its steps' rows, and writes the saga, the steps and the saga's
// events (rows of stored_events, published by the outbox relay). A running saga always
// has exactly one live task (a step row with task_state 'ready' or 'leased'), written
// in the transaction that made it due, so no saga is ever left without a next move.
//
// Workers claim ready tasks with FOR UPDATE SKIP LOCKED: a claim leases them until their
// deadline; claims of other workers and sidecars never wait for each other or take the
// same task. Each attempt has a new random task id (its lease token): an answer is
// matched against the live task's id, so an answer to an attempt that timed out, was
// taken back or was already answered matches nothing and is refused
// (FailedPrecondition). A worker whose stream ends keeps its leases: it may answer
// through another sidecar before their deadline; a task a stream failed to deliver is
// given back at once. Every sidecar sweeps expired leases (whichever locks the saga
// first makes the timeout), so timeouts fire while any sidecar is alive.
//
// Workers are woken without polling delay. A state change that makes a task due while
// a stream of this sidecar for its queue has room leases it to that stream in the
// change itself (no claim), and hands it over once committed. Otherwise the stream is
// woken to claim it, and, unless one here has room, a NOTIFY (sent after the commit,
// coalesced) wakes other sidecars' streams. A one-second poll covers a lost
// notification, and a stream sleeps until the next retry's backoff ends.
//
// Group commit: answers (and starts) that arrive while every slot is busy are written
// together by the next slot holder, in one transaction that locks their sagas in saga
// id order and writes all the changes in one statement. Each is still its saga's own
// change, all or nothing with its events; no timer delays a lone call.
package saga
