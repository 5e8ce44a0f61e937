package server

import (
	"context"
	"errors"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/saga"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/validate"
)

// Limits of SagaService requests.
const (
	defaultSagaPage     = 100
	maxSagaPage         = 1000
	maxCancelReason     = 1024
	maxWorkerID         = 255
	maxPollNames        = 256
	defaultTaskInFlight = 16
	maxTaskInFlight     = 1000
	maxTaskErrorType    = saga.MaxErrorTypeLen
	maxTaskErrorMessage = saga.MaxErrorMessageLen
	// maxPageToken is longer than any ListSagas token (34 bytes).
	maxPageToken        = 64
	defaultPollWorkerID = "worker"
)

// SagaService implements eventgw.v1.SagaService over the saga engine.
type SagaService struct {
	eventgwv1.UnimplementedSagaServiceServer
	engine *saga.Engine
}

// NewSagaService builds the SagaService handlers.
func NewSagaService(e *saga.Engine) *SagaService { return &SagaService{engine: e} }

// sagaError maps the saga engine's errors to statuses, then hands the rest to
// rewriteError.
func sagaError(err error) error {
	var ended *saga.EndedError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrTaskNotLeased):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, store.ErrSagaNotFound):
		return status.Error(codes.NotFound, "saga not found")
	case errors.Is(err, store.ErrWorkflowNotFound):
		return status.Error(codes.NotFound, "workflow not registered: call RegisterWorkflow first")
	case errors.As(err, &ended):
		return status.Error(codes.FailedPrecondition, ended.Error())
	case errors.Is(err, saga.ErrCompensating):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, saga.ErrIdempotencyKeyReused):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, saga.ErrShutdown):
		return status.Error(codes.Unavailable, err.Error())
	}
	// The saga store's calls run inside store.Do: their errors are in the store's
	// classes already (a PostgreSQL restart is Unavailable, not Internal).
	return rewriteError(err)
}

// RegisterWorkflow implements SagaService.RegisterWorkflow.
func (s *SagaService) RegisterWorkflow(ctx context.Context, req *eventgwv1.RegisterWorkflowRequest) (*eventgwv1.RegisterWorkflowResponse, error) {
	d, err := toDefinition(req.GetWorkflow())
	if err != nil {
		return nil, sagaError(err)
	}
	v, created, err := s.engine.Register(ctx, d)
	if err != nil {
		return nil, sagaError(err)
	}
	return &eventgwv1.RegisterWorkflowResponse{Version: v, Created: created}, nil
}

func toDefinition(w *eventgwv1.WorkflowDefinition) (*saga.Definition, error) {
	if w == nil {
		return nil, validate.Errorf("workflow", "is required")
	}
	d := &saga.Definition{
		WorkflowID: w.GetWorkflowId(), Name: w.GetName(), Description: w.GetDescription(),
		EnableCompensation: w.GetEnableCompensation(), Steps: make([]saga.Step, len(w.GetSteps())),
	}
	if len(d.Steps) > saga.MaxSteps {
		return nil, validate.Errorf("workflow.steps", "has %d steps, over the limit of %d", len(d.Steps), saga.MaxSteps)
	}
	for i, st := range w.GetSteps() {
		r := st.GetRetry()
		var jitter *float64
		if r != nil {
			jitter = r.Jitter
		}
		d.Steps[i] = saga.Step{
			ID: st.GetStepId(), Name: st.GetName(), Action: st.GetAction(), Compensation: st.GetCompensationAction(),
			TimeoutSeconds: int(st.GetTimeoutSeconds()),
			Retry: saga.RetryPolicy{
				MaxAttempts: int(r.GetMaxAttempts()), InitialBackoffMS: int(r.GetInitialBackoffMs()),
				Multiplier: r.GetBackoffMultiplier(), MaxBackoffMS: int(r.GetMaxBackoffMs()), Jitter: jitter,
			},
		}
		if in := st.GetInput(); in != nil && len(in.GetFields()) > 0 {
			b, err := event.AppendStructJSON(nil, in)
			if err != nil {
				return nil, validate.Prefix("workflow.steps["+strconv.Itoa(i)+"].input", err)
			}
			d.Steps[i].Input = b
		}
	}
	return d, nil
}

// StartSaga implements SagaService.StartSaga.
func (s *SagaService) StartSaga(ctx context.Context, req *eventgwv1.StartSagaRequest) (*eventgwv1.StartSagaResponse, error) {
	sr, err := toStart(req)
	if err != nil {
		return nil, sagaError(err)
	}
	sg, created, err := s.engine.Start(ctx, sr)
	if err != nil {
		return nil, sagaError(err)
	}
	out, err := s.toSaga(ctx, &sg, true)
	if err != nil {
		return nil, sagaError(err)
	}
	return &eventgwv1.StartSagaResponse{Saga: out, Created: created}, nil
}

// toStart checks a StartSaga request and translates it (the tenant id canonical).
func toStart(req *eventgwv1.StartSagaRequest) (saga.StartRequest, error) {
	sr := saga.StartRequest{WorkflowID: req.GetWorkflowId(), IdempotencyKey: req.GetIdempotencyKey()}
	if err := validate.Name("workflow_id", sr.WorkflowID, saga.MaxIDLen, true); err != nil {
		return sr, err
	}
	var err error
	if sr.TenantID, err = validate.CanonicalUUID("tenant_id", req.GetTenantId()); err != nil {
		return sr, err
	}
	if err := saga.Text("idempotency_key", sr.IdempotencyKey, saga.MaxIdempotencyKey, false); err != nil {
		return sr, err
	}
	sr.Context, err = objectJSON("context", req.GetContext(), req.GetContextJson(), req.GetInitialContext() != nil)
	return sr, err
}

// objectJSON is a request's JSON object given as a Struct or as bytes ("{}" when set
// is false), within the rules of stored JSON (validate.JSONObject: what is accepted can
// be read back as a Struct) and saga.MaxContextBytes. Errors name the field and the
// rule, never the data.
func objectJSON(field string, st *structpb.Struct, raw []byte, set bool) ([]byte, error) {
	switch {
	case !set:
		return []byte("{}"), nil
	case st != nil:
		b, err := event.AppendStructJSON(make([]byte, 0, 256), st)
		if err != nil {
			return nil, validate.Prefix(field, err)
		}
		if len(b) > saga.MaxContextBytes {
			return nil, validate.Errorf(field, "is %d bytes as JSON, over the limit of %d", len(b), saga.MaxContextBytes)
		}
		return b, nil
	}
	if err := saga.CheckObject(field+"_json", raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// GetSaga implements SagaService.GetSaga.
func (s *SagaService) GetSaga(ctx context.Context, req *eventgwv1.GetSagaRequest) (*eventgwv1.GetSagaResponse, error) {
	tenant, id, err := tenantSaga(req.GetTenantId(), req.GetSagaId())
	if err != nil {
		return nil, sagaError(err)
	}
	v, err := s.engine.Get(ctx, tenant, id)
	if err != nil {
		return nil, sagaError(err)
	}
	out, err := toSagaView(v)
	if err != nil {
		return nil, sagaError(err)
	}
	return &eventgwv1.GetSagaResponse{Saga: out}, nil
}

// tenantSaga answers a request's tenant and saga ids in canonical form.
func tenantSaga(tenant, id string) (string, string, error) {
	t, err := validate.CanonicalUUID("tenant_id", tenant)
	if err != nil {
		return "", "", err
	}
	sg, err := validate.CanonicalUUID("saga_id", id)
	return t, sg, err
}

// ListSagas implements SagaService.ListSagas.
func (s *SagaService) ListSagas(ctx context.Context, req *eventgwv1.ListSagasRequest) (*eventgwv1.ListSagasResponse, error) {
	f, err := toSagaFilter(req)
	if err != nil {
		return nil, sagaError(err)
	}
	rows, next, err := s.engine.List(ctx, f)
	if err != nil {
		return nil, sagaError(err)
	}
	resp := &eventgwv1.ListSagasResponse{Sagas: make([]*eventgwv1.Saga, len(rows)), NextPageToken: next}
	for i := range rows {
		if resp.Sagas[i], err = s.toSaga(ctx, &rows[i], false); err != nil {
			return nil, sagaError(err)
		}
	}
	return resp, nil
}

func toSagaFilter(req *eventgwv1.ListSagasRequest) (store.SagaFilter, error) {
	f := store.SagaFilter{WorkflowID: req.GetWorkflowId(), PageSize: int(req.GetPageSize()), PageToken: req.GetPageToken()}
	var err error
	if f.TenantID, err = validate.CanonicalUUID("tenant_id", req.GetTenantId()); err != nil {
		return f, err
	}
	if len(f.PageToken) > maxPageToken {
		return f, validate.Errorf("page_token", "is not a next_page_token of ListSagas")
	}
	if len(req.GetStates()) > len(sagaStates) {
		return f, validate.Errorf("states", "names %d states; there are %d", len(req.GetStates()), len(sagaStates))
	}
	if err := validate.Name("workflow_id", f.WorkflowID, saga.MaxIDLen, false); err != nil {
		return f, err
	}
	for i, st := range req.GetStates() {
		name, ok := sagaStateNames[st]
		if !ok {
			return f, validate.Errorf("states["+strconv.Itoa(i)+"]", "must be a saga state such as SAGA_STATE_FAILED")
		}
		f.States = append(f.States, name)
	}
	switch {
	case f.PageSize == 0:
		f.PageSize = defaultSagaPage
	case f.PageSize < 0 || f.PageSize > maxSagaPage:
		return f, validate.Errorf("page_size", "must be between 1 and %d (0: %d)", maxSagaPage, defaultSagaPage)
	}
	if f.CreatedAfter, err = validate.Timestamp("created_after", req.GetCreatedAfter()); err != nil {
		return f, err
	}
	if f.CreatedBefore, err = validate.Timestamp("created_before", req.GetCreatedBefore()); err != nil {
		return f, err
	}
	if !f.CreatedAfter.IsZero() && !f.CreatedBefore.IsZero() && !f.CreatedAfter.Before(f.CreatedBefore) {
		return f, validate.Errorf("created_before", "must be after created_after")
	}
	return f, nil
}

// CancelSaga implements SagaService.CancelSaga.
func (s *SagaService) CancelSaga(ctx context.Context, req *eventgwv1.CancelSagaRequest) (*eventgwv1.CancelSagaResponse, error) {
	tenant, id, err := tenantSaga(req.GetTenantId(), req.GetSagaId())
	if err != nil {
		return nil, sagaError(err)
	}
	if err := saga.Text("reason", req.GetReason(), maxCancelReason, false); err != nil {
		return nil, sagaError(err)
	}
	sg, err := s.engine.Cancel(ctx, tenant, id, req.GetReason())
	if err != nil {
		return nil, sagaError(err)
	}
	out, err := s.toSaga(ctx, &sg, true)
	if err != nil {
		return nil, sagaError(err)
	}
	return &eventgwv1.CancelSagaResponse{Saga: out}, nil
}

// PollTasks implements SagaService.PollTasks.
func (s *SagaService) PollTasks(req *eventgwv1.PollTasksRequest, stream eventgwv1.SagaService_PollTasksServer) error {
	pr, err := toPollRequest(req)
	if err != nil {
		return sagaError(err)
	}
	asJSON := req.GetPayloadAsJson()
	err = s.engine.Poll(stream.Context(), pr, func(tasks []saga.Task) error {
		resp := &eventgwv1.PollTasksResponse{Tasks: make([]*eventgwv1.Task, len(tasks))}
		for i := range tasks {
			resp.Tasks[i] = toTask(&tasks[i], asJSON)
		}
		return stream.Send(resp)
	})
	if errors.Is(err, context.Canceled) && stream.Context().Err() != nil {
		return nil //nolint:nilerr // the worker ended its stream: not a failed call
	}
	return sagaError(err)
}

func toPollRequest(req *eventgwv1.PollTasksRequest) (saga.PollRequest, error) {
	pr := saga.PollRequest{
		WorkerID: req.GetWorkerId(), Actions: req.GetActions(), Compensations: req.GetCompensations(),
		MaxInFlight: int(req.GetMaxInFlight()),
	}
	if err := saga.Text("worker_id", pr.WorkerID, maxWorkerID, false); err != nil {
		return pr, err
	}
	if pr.WorkerID == "" {
		pr.WorkerID = defaultPollWorkerID
	}
	n := len(pr.Actions) + len(pr.Compensations)
	if n == 0 {
		return pr, validate.Errorf("actions", "is empty: name at least one action or compensation this worker runs")
	}
	if n > maxPollNames {
		return pr, validate.Errorf("actions", "with compensations names %d actions, over the limit of %d", n, maxPollNames)
	}
	for i, a := range pr.Actions {
		if err := validate.Name("actions["+strconv.Itoa(i)+"]", a, saga.MaxIDLen, true); err != nil {
			return pr, err
		}
	}
	for i, c := range pr.Compensations {
		if err := validate.Name("compensations["+strconv.Itoa(i)+"]", c, saga.MaxIDLen, true); err != nil {
			return pr, err
		}
	}
	switch {
	case pr.MaxInFlight == 0:
		pr.MaxInFlight = defaultTaskInFlight
	case pr.MaxInFlight < 0 || pr.MaxInFlight > maxTaskInFlight:
		return pr, validate.Errorf("max_in_flight", "must be between 1 and %d (0: %d)", maxTaskInFlight, defaultTaskInFlight)
	}
	return pr, nil
}

func toTask(t *saga.Task, asJSON bool) *eventgwv1.Task {
	kind := eventgwv1.TaskKind_TASK_KIND_ACTION
	if t.Kind == saga.KindCompensation {
		kind = eventgwv1.TaskKind_TASK_KIND_COMPENSATION
	}
	out := &eventgwv1.Task{
		TaskId: t.TaskID, SagaId: t.SagaID, TenantId: t.TenantID, StepId: t.StepID, Action: t.Action, Kind: kind,
		Attempt: int32(t.Attempt), Deadline: timestamppb.New(t.Deadline), ReadyAt: timestamppb.New(t.ReadyAt),
		WorkflowId: t.WorkflowID, WorkflowVersion: t.WorkflowVersion,
	}
	if asJSON {
		out.ContextJson, out.InputJson = t.Context, t.Input
		return out
	}
	// Data that cannot be a Struct (stored before the write-time rules) comes as JSON
	// bytes instead: one such task never fails the stream (it would be given back and
	// sent again, forever).
	var ok bool
	if out.Context, ok = toStruct(t.Context); !ok {
		out.Context, out.ContextJson = nil, t.Context
	}
	if out.Input, ok = toStruct(t.Input); !ok {
		out.Input, out.InputJson = nil, t.Input
	}
	return out
}

// toStruct converts stored saga JSON (a context, an input, an output) to a Struct; ok
// is false when it cannot be one (see storedStruct). Empty is an empty Struct.
func toStruct(b []byte) (*structpb.Struct, bool) {
	if len(b) == 0 {
		return &structpb.Struct{}, true
	}
	return storedStruct(b)
}

// CompleteTask implements SagaService.CompleteTask.
func (s *SagaService) CompleteTask(ctx context.Context, req *eventgwv1.CompleteTaskRequest) (*eventgwv1.CompleteTaskResponse, error) {
	task, err := validate.CanonicalUUID("task_id", req.GetTaskId())
	if err != nil {
		return nil, sagaError(err)
	}
	out, err := objectJSON("output", req.GetOutput(), req.GetOutputJson(), req.GetResult() != nil)
	if err != nil {
		return nil, sagaError(err)
	}
	if err := s.engine.Complete(ctx, task, out); err != nil {
		return nil, sagaError(err)
	}
	return &eventgwv1.CompleteTaskResponse{}, nil
}

// FailTask implements SagaService.FailTask.
func (s *SagaService) FailTask(ctx context.Context, req *eventgwv1.FailTaskRequest) (*eventgwv1.FailTaskResponse, error) {
	task, err := validate.CanonicalUUID("task_id", req.GetTaskId())
	if err != nil {
		return nil, sagaError(err)
	}
	if req.GetErrorType() == "" {
		return nil, sagaError(validate.Errorf("error_type", "is required (such as the exception's class name)"))
	}
	if err := validate.Name("error_type", req.GetErrorType(), maxTaskErrorType, true); err != nil {
		return nil, sagaError(err)
	}
	if err := saga.Text("error_message", req.GetErrorMessage(), maxTaskErrorMessage, true); err != nil {
		return nil, sagaError(err)
	}
	if err := s.engine.Fail(ctx, task, req.GetErrorType(), req.GetErrorMessage(), req.GetNonRetryable()); err != nil {
		return nil, sagaError(err)
	}
	return &eventgwv1.FailTaskResponse{}, nil
}

var sagaStates = map[string]eventgwv1.SagaState{
	saga.StateRunning: eventgwv1.SagaState_SAGA_STATE_RUNNING, saga.StateCompleted: eventgwv1.SagaState_SAGA_STATE_COMPLETED,
	saga.StateCompensating: eventgwv1.SagaState_SAGA_STATE_COMPENSATING, saga.StateCompensated: eventgwv1.SagaState_SAGA_STATE_COMPENSATED,
	saga.StateFailed: eventgwv1.SagaState_SAGA_STATE_FAILED, saga.StateCancelled: eventgwv1.SagaState_SAGA_STATE_CANCELLED,
}

var sagaStateNames = func() map[eventgwv1.SagaState]string {
	m := make(map[eventgwv1.SagaState]string, len(sagaStates))
	for k, v := range sagaStates {
		m[v] = k
	}
	return m
}()

var stepStatuses = map[string]eventgwv1.StepStatus{
	saga.StepPending: eventgwv1.StepStatus_STEP_STATUS_PENDING, saga.StepRunning: eventgwv1.StepStatus_STEP_STATUS_RUNNING,
	saga.StepCompleted: eventgwv1.StepStatus_STEP_STATUS_COMPLETED, saga.StepFailed: eventgwv1.StepStatus_STEP_STATUS_FAILED,
	saga.StepCompensating: eventgwv1.StepStatus_STEP_STATUS_COMPENSATING, saga.StepCompensated: eventgwv1.StepStatus_STEP_STATUS_COMPENSATED,
	saga.StepCompensationFailed: eventgwv1.StepStatus_STEP_STATUS_COMPENSATION_FAILED, saga.StepSkipped: eventgwv1.StepStatus_STEP_STATUS_SKIPPED,
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// toSaga is a saga's row as a message (withContext: with its context).
func (s *SagaService) toSaga(ctx context.Context, sg *store.SagaRow, withContext bool) (*eventgwv1.Saga, error) {
	out := &eventgwv1.Saga{
		SagaId: sg.ID, WorkflowId: sg.WorkflowID, TenantId: sg.TenantID, WorkflowVersion: sg.WorkflowVersion,
		SagaState: sagaStates[sg.State], CreatedAt: ts(sg.CreatedAt), UpdatedAt: ts(sg.UpdatedAt), EndedAt: ts(sg.EndedAt),
		ErrorType: sg.ErrorType, ErrorMessage: sg.ErrorMessage, CancelRequested: sg.CancelRequested,
		IdempotencyKey: sg.IdempotencyKey,
	}
	if !saga.Ended(sg.State) {
		out.CurrentStep = s.engine.StepID(ctx, sg, sg.CurrentStep)
	}
	if sg.FailedStep >= 0 {
		out.FailedStep = s.engine.StepID(ctx, sg, sg.FailedStep)
	}
	if withContext {
		out.Context, _ = toStruct(sg.Context) // nil when it cannot be a Struct (see toStruct)
	}
	return out, nil
}

func toSagaView(v *saga.View) (*eventgwv1.Saga, error) {
	sg := &v.Saga
	stepID := func(i int) string {
		if i < 0 || i >= len(v.Def.Steps) {
			return ""
		}
		return v.Def.Steps[i].ID
	}
	out := &eventgwv1.Saga{
		SagaId: sg.ID, WorkflowId: sg.WorkflowID, TenantId: sg.TenantID, WorkflowVersion: sg.WorkflowVersion,
		SagaState: sagaStates[sg.State], CreatedAt: ts(sg.CreatedAt), UpdatedAt: ts(sg.UpdatedAt), EndedAt: ts(sg.EndedAt),
		ErrorType: sg.ErrorType, ErrorMessage: sg.ErrorMessage, CancelRequested: sg.CancelRequested,
		IdempotencyKey: sg.IdempotencyKey, FailedStep: stepID(sg.FailedStep),
	}
	if !saga.Ended(sg.State) {
		out.CurrentStep = stepID(sg.CurrentStep)
	}
	// A context or output stored before the write-time rules that cannot be a Struct is
	// left out rather than failing the call.
	out.Context, _ = toStruct(sg.Context)
	rows := make(map[int]*store.SagaStepRow, len(v.Steps))
	for i := range v.Steps {
		rows[v.Steps[i].Index] = &v.Steps[i]
	}
	for i := range v.Def.Steps {
		d := &v.Def.Steps[i]
		st := &eventgwv1.SagaStep{
			StepId: d.ID, Name: d.Name, Action: d.Action, CompensationAction: d.Compensation,
			Status: eventgwv1.StepStatus_STEP_STATUS_PENDING,
		}
		if r := rows[i]; r != nil {
			st.Status = stepStatuses[r.Status]
			st.Attempts, st.CompensationAttempts = int32(r.Attempt), int32(r.CompAttempt)
			st.ScheduledAt, st.StartedAt, st.FinishedAt = ts(r.ScheduledAt), ts(r.StartedAt), ts(r.FinishedAt)
			st.CompensationScheduledAt, st.CompensatedAt = ts(r.CompScheduledAt), ts(r.CompensatedAt)
			st.ErrorType, st.ErrorMessage = r.ErrorType, r.ErrorMessage
			switch r.TaskState {
			case store.TaskLeased:
				st.WorkerId, st.Deadline = r.WorkerID, ts(r.Deadline)
			case store.TaskReady:
				if (r.TaskKind == saga.KindAction && r.Attempt > 1) || (r.TaskKind == saga.KindCompensation && r.CompAttempt > 1) {
					st.NextAttemptAt = ts(r.ReadyAt)
				}
			}
			if r.Output != nil {
				st.Output, _ = toStruct(r.Output)
			}
		}
		out.Steps = append(out.Steps, st)
	}
	for _, h := range v.History {
		d := saga.ParseHistory(h)
		kind := eventgwv1.TaskKind_TASK_KIND_UNSPECIFIED
		switch d.Kind {
		case "action":
			kind = eventgwv1.TaskKind_TASK_KIND_ACTION
		case "compensation":
			kind = eventgwv1.TaskKind_TASK_KIND_COMPENSATION
		}
		out.History = append(out.History, &eventgwv1.SagaHistoryEntry{
			Sequence: h.Sequence, EventType: h.Type, Time: ts(h.OccurredAt), StepId: d.StepID, Kind: kind,
			Attempt: int32(d.Attempt), ErrorType: d.ErrorType, ErrorMessage: d.ErrorMessage, WillRetry: d.WillRetry,
			State: sagaStates[d.State], EventId: h.ID,
		})
	}
	return out, nil
}
