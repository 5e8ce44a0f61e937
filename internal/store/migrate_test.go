package store_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// Several sidecars starting at once on a new database: one applies the migrations, the
// others wait for it and find nothing left to do.
func TestMigrateConcurrently(t *testing.T) {
	dsn := testenv.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	applied := make([]int, 4)
	errs := make([]error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pool, err := pgxpool.New(ctx, dsn)
			if err != nil {
				errs[i] = err
				return
			}
			defer pool.Close()
			applied[i], errs[i] = store.Migrate(ctx, pool)
		}()
	}
	wg.Wait()
	total := 0
	for i := range 4 {
		if errs[i] != nil {
			t.Fatalf("sidecar %d: %v", i, errs[i])
		}
		total += applied[i]
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var files int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM goose_db_version WHERE version_id > 0`).Scan(&files); err != nil {
		t.Fatal(err)
	}
	if total != files || files < 2 {
		t.Fatalf("%d migrations applied across sidecars, %d recorded: each must be applied exactly once", total, files)
	}
	// Applying again is a no-op.
	if n, err := store.Migrate(ctx, pool); err != nil || n != 0 {
		t.Fatalf("second run applied %d (%v)", n, err)
	}
}

func TestMergePatchRFC7386(t *testing.T) {
	// Examples from RFC 7386 section 3.
	cases := []struct{ target, patch, want any }{
		{map[string]any{"a": "b"}, map[string]any{"a": "c"}, map[string]any{"a": "c"}},
		{map[string]any{"a": "b"}, map[string]any{"b": "c"}, map[string]any{"a": "b", "b": "c"}},
		{map[string]any{"a": "b"}, map[string]any{"a": nil}, map[string]any{}},
		{map[string]any{"a": "b", "b": "c"}, map[string]any{"a": nil}, map[string]any{"b": "c"}},
		{map[string]any{"a": []any{"b"}}, map[string]any{"a": "c"}, map[string]any{"a": "c"}},
		{map[string]any{"a": "c"}, map[string]any{"a": []any{"b"}}, map[string]any{"a": []any{"b"}}},
		{map[string]any{"a": map[string]any{"b": "c"}}, map[string]any{"a": map[string]any{"b": "d", "c": nil}}, map[string]any{"a": map[string]any{"b": "d"}}},
		{map[string]any{"a": []any{map[string]any{"b": "c"}}}, map[string]any{"a": []any{1.0}}, map[string]any{"a": []any{1.0}}},
		{[]any{"a", "b"}, []any{"c", "d"}, []any{"c", "d"}},
		{map[string]any{"a": "b"}, []any{"c"}, []any{"c"}},
		{map[string]any{"a": "foo"}, nil, nil},
		{map[string]any{"e": nil}, map[string]any{"a": 1.0}, map[string]any{"e": nil, "a": 1.0}},
		{[]any{1.0, 2.0}, map[string]any{"a": "b", "c": nil}, map[string]any{"a": "b"}},
		{map[string]any{}, map[string]any{"a": map[string]any{"bb": map[string]any{"ccc": nil}}}, map[string]any{"a": map[string]any{"bb": map[string]any{}}}},
	}
	for i, c := range cases {
		got := store.MergePatch(c.target, c.patch)
		if !equalJSON(got, c.want) {
			t.Errorf("case %d: got %#v, want %#v", i, got, c.want)
		}
	}
}

func equalJSON(a, b any) bool {
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok || len(av) != len(bv) {
			return false
		}
		for k, v := range av {
			w, ok := bv[k]
			if !ok || !equalJSON(v, w) {
				return false
			}
		}
		return true
	case []any:
		bv, ok := b.([]any)
		if !ok || len(av) != len(bv) {
			return false
		}
		for i := range av {
			if !equalJSON(av[i], bv[i]) {
				return false
			}
		}
		return true
	default:
		return a == b
	}
}
