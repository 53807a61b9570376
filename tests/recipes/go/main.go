// The scenario tests/it/recipes.rs runs against a live daemon: requests
// through the middleware for tenants clinic1 and tiny, printed as JSON.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"recipe/tenantwatch"
	"sort"
	"strconv"
	"time"
)

func main() {
	tw, err := tenantwatch.New(os.Getenv("TW_URL"), os.Getenv("TW_UDP"), "")
	if err != nil {
		panic(err)
	}
	if ms, err := strconv.Atoi(os.Getenv("TW_TIMEOUT_MS")); err == nil {
		tw.Timeout = time.Duration(ms) * time.Millisecond
	}
	app := http.NewServeMux()
	app.Handle("/patients/", tw.Handler("GET /patients/{id}",
		func(r *http.Request) string { return r.Header.Get("X-Tenant") },
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tw.Timed(r.Context(), "read", func() (int64, error) { return 3, nil })
			tw.Timed(r.Context(), "write", func() (int64, error) { return 1, nil })
			w.Write([]byte("ok"))
		})))
	server := httptest.NewServer(app)
	defer server.Close()
	out := map[string]interface{}{}
	for _, tenant := range []string{"clinic1", "tiny"} {
		n := 5
		if tenant == "tiny" {
			n = 3
		}
		var codes []int
		for i := 0; i < n; i++ {
			req, _ := http.NewRequest("GET", server.URL+"/patients/7", nil)
			req.Header.Set("X-Tenant", tenant)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				panic(err)
			}
			resp.Body.Close()
			codes = append(codes, resp.StatusCode)
			if resp.StatusCode == 429 {
				out["retry_after"] = resp.Header.Get("Retry-After")
				out["ratelimit"] = resp.Header.Get("RateLimit")
			}
		}
		out[tenant] = codes
	}
	// The cost of one check, for docs/integration.md: the median of 200.
	var took []time.Duration
	for i := 0; i < 200; i++ {
		start := time.Now()
		tw.Check(context.Background(), "bench", 1)
		took = append(took, time.Since(start))
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	out["check_us_median"] = took[100].Microseconds()
	out["failures"] = tw.Failures.Load()
	tw.Close()
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
}
