package server

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/saga"
)

// canary is in every hostile value: no status message may quote it.
const canary = "PHI-CANARY-5521"

// nestedJSON is an object nested depth levels deep, holding the canary.
func nestedJSON(depth int) []byte {
	return []byte(strings.Repeat(`{"`+canary+`":`, depth) + `"` + canary + `"` + strings.Repeat("}", depth))
}

func nestedStruct(depth int) *structpb.Struct {
	st, _ := structpb.NewStruct(map[string]any{"leaf": canary})
	for range depth - 1 {
		st = &structpb.Struct{Fields: map[string]*structpb.Value{canary: structpb.NewStructValue(st)}}
	}
	return st
}

// The saga handlers' input checks, before any I/O: each hostile request is refused as
// InvalidArgument naming the field and the rule it broke, and never quoting what was
// sent. The rules are the event store's (validate.CanonicalUUID, validate.JSONObject,
// validate.Timestamp): what a saga accepts can be stored and read back.
func TestSagaInputRules(t *testing.T) {
	const tenant = "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a"
	ctxJSON := func(b []byte) *eventgwv1.StartSagaRequest {
		return &eventgwv1.StartSagaRequest{WorkflowId: "wf", TenantId: tenant, InitialContext: &eventgwv1.StartSagaRequest_ContextJson{ContextJson: b}}
	}
	start := func(req *eventgwv1.StartSagaRequest) func() error {
		return func() error {
			if _, err := toStart(req); err != nil {
				return rewriteError(err)
			}
			return nil
		}
	}
	output := func(b []byte) func() error {
		return func() error {
			_, err := objectJSON("output", nil, b, true)
			return rewriteError(err)
		}
	}
	list := func(req *eventgwv1.ListSagasRequest) func() error {
		return func() error {
			req.TenantId = tenant
			_, err := toSagaFilter(req)
			return rewriteError(err)
		}
	}
	def := func(edit func(w *eventgwv1.WorkflowDefinition)) func() error {
		return func() error {
			w := &eventgwv1.WorkflowDefinition{WorkflowId: "wf", Steps: []*eventgwv1.WorkflowStep{{StepId: "s1", Action: "a1"}}}
			edit(w)
			d, err := toDefinition(w)
			if err == nil {
				err = d.Normalize()
			}
			return rewriteError(err)
		}
	}
	cases := []struct {
		name  string
		call  func() error
		field string
		rule  string // a word of the rule the message must give
	}{
		{"nil tenant", start(&eventgwv1.StartSagaRequest{WorkflowId: "wf", TenantId: "00000000-0000-0000-0000-000000000000"}), "tenant_id", "nil UUID"},
		{"tenant in braces", start(&eventgwv1.StartSagaRequest{WorkflowId: "wf", TenantId: "{" + tenant[:34] + "}"}), "tenant_id", "UUID"},
		{"tenant as a urn", start(&eventgwv1.StartSagaRequest{WorkflowId: "wf", TenantId: "urn:uuid:" + tenant}), "tenant_id", "UUID"},
		{"context nested 65 deep", start(ctxJSON(nestedJSON(65))), "context_json", "deeper than 64"},
		{"context number out of range", start(ctxJSON([]byte(`{"` + canary + `":1e400}`))), "context_json", "number out of range"},
		{"context with U+0000", start(ctxJSON([]byte(`{"k":"` + canary + `\u0000"}`))), "context_json", "U+0000"},
		{"context with invalid UTF-8", start(ctxJSON([]byte("{\"k\":\"" + canary + "\xff\"}"))), "context_json", "UTF-8"},
		{"context with a lone surrogate", start(ctxJSON([]byte(`{"k":"` + canary + `\ud800"}`))), "context_json", "surrogate"},
		{"context with a repeated key", start(ctxJSON([]byte(`{"` + canary + `":1,"` + canary + `":2}`))), "context_json", "repeats a key"},
		{"context not an object", start(ctxJSON([]byte(`["` + canary + `"]`))), "context_json", "JSON object"},
		{"context not JSON", start(ctxJSON([]byte(`{"k":` + canary + `}`))), "context_json", "not valid JSON"},
		{"context too big", start(ctxJSON([]byte(`{"k":"` + strings.Repeat(canary, 20000) + `"}`))), "context_json", "over the limit"},
		{"context Struct nested 65 deep", start(&eventgwv1.StartSagaRequest{
			WorkflowId: "wf", TenantId: tenant, InitialContext: &eventgwv1.StartSagaRequest_Context{Context: nestedStruct(65)},
		}), "context", "deeper than 64"},
		{"idempotency key with a control character", start(&eventgwv1.StartSagaRequest{WorkflowId: "wf", TenantId: tenant, IdempotencyKey: canary + "\x01"}), "idempotency_key", "control"},
		{"idempotency key too long", start(&eventgwv1.StartSagaRequest{WorkflowId: "wf", TenantId: tenant, IdempotencyKey: strings.Repeat(canary, 20)}), "idempotency_key", "255 bytes"},
		{"output nested 65 deep", output(nestedJSON(65)), "output_json", "deeper than 64"},
		{"output with invalid UTF-8", output([]byte("{\"" + canary + "\xc3\x28\":1}")), "output_json", "UTF-8"},
		{"output number out of range", output([]byte(`{"n":-1e309}`)), "output_json", "number out of range"},
		{"list created_after before year 1", list(&eventgwv1.ListSagasRequest{CreatedAfter: &timestamppb.Timestamp{Seconds: -62135596801}}), "created_after", "0001-01-01"},
		{"list created_before after year 9999", list(&eventgwv1.ListSagasRequest{CreatedBefore: &timestamppb.Timestamp{Seconds: 253402300800}}), "created_before", "9999-12-31"},
		{"list nanos out of range", list(&eventgwv1.ListSagasRequest{CreatedAfter: &timestamppb.Timestamp{Nanos: 1e9}}), "created_after", "0001-01-01"},
		{"list huge page token", list(&eventgwv1.ListSagasRequest{PageToken: strings.Repeat(canary, 1000)}), "page_token", "next_page_token"},
		{"list too many states", list(&eventgwv1.ListSagasRequest{States: make([]eventgwv1.SagaState, 100)}), "states", "states"},
		{"step input nested 65 deep", def(func(w *eventgwv1.WorkflowDefinition) { w.Steps[0].Input = nestedStruct(65) }), "workflow.steps[0].input", "deeper than 64"},
		{"step input with U+0000", def(func(w *eventgwv1.WorkflowDefinition) {
			w.Steps[0].Input, _ = structpb.NewStruct(map[string]any{"k": canary + "\x00"})
		}), "workflow.steps[0].input", "U+0000"},
		{"description with invalid UTF-8", def(func(w *eventgwv1.WorkflowDefinition) { w.Description = canary + "\xff" }), "workflow.description", "UTF-8"},
		{"description too long", def(func(w *eventgwv1.WorkflowDefinition) { w.Description = strings.Repeat(canary, 300) }), "workflow.description", "4096 bytes"},
		{"too many steps", def(func(w *eventgwv1.WorkflowDefinition) {
			w.Steps = make([]*eventgwv1.WorkflowStep, saga.MaxSteps+1)
		}), "workflow.steps", "over the limit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("%v, want InvalidArgument", err)
			}
			if !strings.HasPrefix(st.Message(), c.field+": ") || !strings.Contains(st.Message(), c.rule) {
				t.Errorf("message %q: want the field %s and the rule (%q)", st.Message(), c.field, c.rule)
			}
			if strings.Contains(st.Message(), canary) {
				t.Errorf("message %q quotes the request", st.Message())
			}
		})
	}
}

// Ids in any letter case name the same saga, tenant and task: they are canonical
// (lowercase) once parsed, so that Go's string comparisons (the machine matching an
// answer to its live task, the tenant allow-list, group-commit keys) agree with
// PostgreSQL's uuid comparisons.
func TestSagaIDsAreCanonical(t *testing.T) {
	const upper = "6F1C2A9E-8D1B-4A4E-9F0E-2B9C1D3E4F5A"
	req, err := toStart(&eventgwv1.StartSagaRequest{WorkflowId: "wf", TenantId: upper})
	if err != nil || req.TenantID != strings.ToLower(upper) {
		t.Fatalf("StartSaga tenant %q (%v), want it lowercase", req.TenantID, err)
	}
	tenant, id, err := tenantSaga(upper, upper)
	if err != nil || tenant != strings.ToLower(upper) || id != strings.ToLower(upper) {
		t.Fatalf("tenantSaga: %q %q %v", tenant, id, err)
	}
	f, err := toSagaFilter(&eventgwv1.ListSagasRequest{TenantId: upper})
	if err != nil || f.TenantID != strings.ToLower(upper) {
		t.Fatalf("ListSagas tenant %q %v", f.TenantID, err)
	}
}
