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
	// The examples of RFC 7386 appendix A, plus nested deletion and big numbers.
	cases := []struct{ target, patch, want string }{
		{`{"a":"b"}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"b"}`, `{"b":"c"}`, `{"a":"b","b":"c"}`},
		{`{"a":"b"}`, `{"a":null}`, `{}`},
		{`{"a":"b","b":"c"}`, `{"a":null}`, `{"b":"c"}`},
		{`{"a":["b"]}`, `{"a":"c"}`, `{"a":"c"}`},
		{`{"a":"c"}`, `{"a":["b"]}`, `{"a":["b"]}`},
		{`{"a":{"b":"c"}}`, `{"a":{"b":"d","c":null}}`, `{"a":{"b":"d"}}`},
		{`{"a":[{"b":"c"}]}`, `{"a":[1]}`, `{"a":[1]}`},
		{`["a","b"]`, `["c","d"]`, `["c","d"]`},
		{`{"a":"b"}`, `["c"]`, `["c"]`},
		{`{"a":"foo"}`, `null`, `null`},
		{`{"a":"foo"}`, `"bar"`, `"bar"`},
		{`{"e":null}`, `{"a":1}`, `{"e":null,"a":1}`},
		{`[1,2]`, `{"a":"b","c":null}`, `{"a":"b"}`},
		{`{}`, `{"a":{"bb":{"ccc":null}}}`, `{"a":{"bb":{}}}`},
		{`{"id":9007199254740993}`, `{"n":1.50}`, `{"id":9007199254740993,"n":1.50}`},
	}
	for i, c := range cases {
		got, err := store.MergePatch([]byte(c.target), []byte(c.patch))
		if err != nil || string(got) != c.want {
			t.Errorf("case %d: %s + %s = %s (%v), want %s", i, c.target, c.patch, got, err, c.want)
		}
	}
	if _, err := store.MergePatch([]byte(`{"a":`), []byte(`{}`)); err == nil {
		t.Error("a malformed target was merged")
	}
}

// A fold starts from the snapshot, applies each event in order, and is {} when the
// result is not an object.
func TestFoldJSON(t *testing.T) {
	l := &store.Loaded{
		Snapshot: &store.Snapshot{State: []byte(`{"name":{"first":"Ada","last":"L"},"age":36}`)},
		Tail: []store.StoredEvent{
			{Data: []byte(`{"name":{"last":"Lovelace"},"phone":"+47 1"}`)},
			{Data: []byte(`{"age":null,"allergies":["penicillin"]}`)},
			{Data: []byte(`{"phone":"+47 2"}`)},
		},
	}
	got, err := store.FoldJSON(l)
	if want := `{"name":{"first":"Ada","last":"Lovelace"},"phone":"+47 2","allergies":["penicillin"]}`; err != nil || string(got) != want {
		t.Errorf("fold: %s (%v), want %s", got, err, want)
	}
	if got, err := store.FoldJSON(&store.Loaded{}); err != nil || string(got) != `{}` {
		t.Errorf("empty fold: %s (%v)", got, err)
	}
	if got, err := store.FoldJSON(&store.Loaded{Tail: []store.StoredEvent{{Data: []byte(`[1]`)}}}); err != nil || string(got) != `{}` {
		t.Errorf("a fold to a non-object: %s (%v), want {}", got, err)
	}
	if _, err := store.FoldJSON(&store.Loaded{Tail: []store.StoredEvent{{EventID: "e1", Data: []byte(`{`)}}}); err == nil {
		t.Error("malformed event data was folded")
	}
}
