package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"
	"swarmnode/receipt"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// statusServer serves the status page, /api/status, /metrics and /debug/pprof.
type statusServer struct {
	addr string
	srv  *http.Server
	done chan struct{}
}

func startStatusServer(addr string, n *Node) (*statusServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("status server %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { servePage(w, n.Report(), n.ledger.snapshot()) })
	mux.HandleFunc("GET /api/ledger", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(n.ledger.snapshot()); err != nil {
			n.log.Warn("ledger json", "err", err)
		}
	})
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(n.Report()); err != nil {
			n.log.Warn("status json", "err", err)
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{Timeout: 5 * time.Second}))
	// Go's profiler, for finding where a node spends its time (the status server
	// binds loopback unless told otherwise). Keep profiles under WriteTimeout:
	// /debug/pprof/profile?seconds=5.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	s := &statusServer{
		addr: ln.Addr().String(),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("status server", "err", err)
		}
	}()
	return s, nil
}

func (s *statusServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	<-s.done
	return err
}

// pageData is the status page's view of a Report.
type pageData struct {
	Report
	Stages    []stageRows
	LossSVG   template.HTML
	ErrorList []errorCount
	Receipts  int
	Work      []workRow
}

// workRow is one peer's line of the ledger on the status page.
type workRow struct {
	Peer string
	receipt.Work
}

type stageRows struct {
	Stage   int
	Holders []HolderReport
}

type errorCount struct {
	Kind  string
	Count uint64
}

func servePage(w http.ResponseWriter, r Report, l Ledger) {
	d := pageData{Report: r, LossSVG: lossSVG(r.History), Receipts: l.Receipts}
	for p, wk := range l.Peers {
		d.Work = append(d.Work, workRow{Peer: p, Work: wk})
	}
	sort.Slice(d.Work, func(i, j int) bool {
		if d.Work[i].Tokens != d.Work[j].Tokens {
			return d.Work[i].Tokens > d.Work[j].Tokens
		}
		return d.Work[i].Peer < d.Work[j].Peer
	})
	for k := 0; k < len(r.Holders); k++ {
		d.Stages = append(d.Stages, stageRows{Stage: k, Holders: r.Holders[k]})
	}
	for k, v := range r.Errors {
		d.ErrorList = append(d.ErrorList, errorCount{k, v})
	}
	sort.Slice(d.ErrorList, func(i, j int) bool { return d.ErrorList[i].Kind < d.ErrorList[j].Kind })
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pageTmpl.Execute(w, d); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

// lossSVG draws the training (and validation) loss as an inline SVG; the
// numbers come from our own Status, never from a peer, and are formatted as
// plain floats, so building the markup by hand is safe.
func lossSVG(h []HistoryPoint) template.HTML {
	const W, H, pad = 640.0, 220.0, 36.0
	if len(h) < 2 {
		return template.HTML(fmt.Sprintf(`<svg id="loss-curve" width="%d" height="%d" xmlns="http://www.w3.org/2000/svg">`+
			`<text x="%d" y="%d" fill="#666">no loss history yet</text></svg>`, int(W), int(H), int(pad), int(H/2)))
	}
	minS, maxS := h[0].Step, h[len(h)-1].Step
	lo, hi := h[0].Loss, h[0].Loss
	for _, p := range h {
		lo, hi = min(lo, p.Loss), max(hi, p.Loss)
		if p.ValLoss != 0 { // 0: not evaluated at this step
			lo, hi = min(lo, p.ValLoss), max(hi, p.ValLoss)
		}
	}
	if hi == lo {
		hi = lo + 1
	}
	if maxS == minS {
		maxS = minS + 1
	}
	x := func(s int64) float64 { return pad + (W-2*pad)*float64(s-minS)/float64(maxS-minS) }
	y := func(v float64) float64 { return H - pad - (H-2*pad)*(v-lo)/(hi-lo) }
	var train, val strings.Builder
	for _, p := range h {
		fmt.Fprintf(&train, "%.1f,%.1f ", x(p.Step), y(p.Loss))
		if p.ValLoss != 0 {
			fmt.Fprintf(&val, "%.1f,%.1f ", x(p.Step), y(p.ValLoss))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg id="loss-curve" width="%d" height="%d" xmlns="http://www.w3.org/2000/svg">`, int(W), int(H))
	fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#ccc"/>`, pad, pad, W-2*pad, H-2*pad)
	fmt.Fprintf(&b, `<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="%s"/>`, train.String())
	if val.Len() > 0 {
		fmt.Fprintf(&b, `<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="%s"/>`, val.String())
	}
	fmt.Fprintf(&b, `<text x="2" y="%.0f" font-size="11">%.3f</text><text x="2" y="%.0f" font-size="11">%.3f</text>`, pad+4, hi, H-pad, lo)
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="11">step %d</text><text x="%.0f" y="%.0f" font-size="11" text-anchor="end">step %d</text>`,
		pad, H-pad+16, minS, W-pad, H-pad+16, maxS)
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-size="11" fill="#1f77b4">train</text><text x="%.0f" y="%.0f" font-size="11" fill="#d62728">val</text>`,
		W-pad-70, pad-6, W-pad-30, pad-6)
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"ago":    func(t time.Time) string { return time.Since(t).Round(100 * time.Millisecond).String() },
	"f1":     func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"f4":     func(v float64) string { return fmt.Sprintf("%.4f", v) },
	"tflops": func(v float64) string { return fmt.Sprintf("%.3g", v/1e12) },
}).Parse(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>swarmnode {{.Run}} · {{.PeerID}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
code{font-size:90%}.self{font-weight:bold}
pre#sample{white-space:pre-wrap;background:#f6f6f6;padding:.5em;max-width:60em}
</style></head><body>
<h1>swarmnode · run <span id="run">{{.Run}}</span></h1>
<table id="node">
<tr><th>peer id</th><td><code id="peer-id">{{.PeerID}}</code></td></tr>
<tr><th>role</th><td id="role">{{.Role}}</td></tr>
<tr><th>stage</th><td id="stage">{{if lt .Stage 0}}none{{else}}{{.Stage}}{{end}}</td></tr>
<tr><th>reachability</th><td id="reachability">{{.Reachability}}</td></tr>
<tr><th>connected peers</th><td>{{.ConnectedPeers}}</td></tr>
<tr><th>addresses</th><td>{{range .Addrs}}<code>{{.}}</code><br>{{end}}</td></tr>
</table>
<h2>Training</h2>
<p>step <span id="step">{{.Step}}</span> · loss <span id="loss">{{f4 .Loss}}</span> · <span id="tps">{{f1 .TokensPerSec}}</span> tokens/s</p>
{{.LossSVG}}
{{with .Sample}}<p>sample at step <span id="sample-step">{{.Step}}</span>:</p>
<pre id="sample">{{.Text}}</pre>
{{end}}<h2>Stage holders</h2>
{{range .Stages}}{{if not .Holders}}<p class="stalled" data-stage="{{.Stage}}"><b>stage {{.Stage}}: no holder — the pipeline is stalled until a peer serves it</b></p>
{{end}}{{end}}<table id="holders">
<tr><th>stage</th><th>peer</th><th>role</th><th>throughput (tok/s)</th><th>queue</th><th>last seen</th></tr>
{{range .Stages}}{{$k := .Stage}}{{if .Holders}}{{range .Holders}}<tr class="holder{{if .Self}} self{{end}}" data-stage="{{$k}}" data-peer="{{.PeerID}}"><td>{{$k}}</td><td><code>{{.PeerID}}</code></td><td>{{.Role}}</td><td>{{f1 .Throughput}}</td><td>{{.Queue}}</td><td>{{ago .LastSeen}} ago</td></tr>
{{end}}{{else}}<tr class="empty" data-stage="{{$k}}"><td>{{$k}}</td><td colspan="5">no holder — the pipeline is stalled until a peer serves it</td></tr>
{{end}}{{end}}</table>
<h2>Pipeline and averaging</h2>
<table id="counters">
<tr><th>microbatches completed</th><td>{{.Microbatches.Completed}}</td></tr>
<tr><th>microbatches retried</th><td>{{.Microbatches.Retried}}</td></tr>
<tr><th>microbatches failed</th><td>{{.Microbatches.Failed}}</td></tr>
<tr><th>microbatches replayed</th><td>{{.Microbatches.Replayed}}</td></tr>
<tr><th>copies taken back</th><td>{{.Microbatches.TakenBack}}</td></tr>
<tr><th>averaging rounds</th><td>{{.Averaging.Rounds}}</td></tr>
<tr><th>last group size</th><td>{{.Averaging.LastGroupSize}}</td></tr>
<tr><th>last round</th><td>{{f1 .Averaging.LastRoundMS}} ms</td></tr>
<tr><th>averaging failures</th><td>{{.Averaging.Failures}}</td></tr>
<tr><th>averaging rounds skipped</th><td>{{.Averaging.Skipped}}</td></tr>
<tr><th>holders evicted from averaging</th><td>{{.Averaging.Evicted}}</td></tr>
<tr><th>audits of other holders passed</th><td>{{.Averaging.Audits}}</td></tr>
</table>
<h2>Verified work</h2>
<p>{{.Receipts}} receipts signed by trainers at their commits (<a href="/api/ledger">JSON</a>)</p>
<table id="ledger"><tr><th>peer</th><th>steps</th><th>microbatches</th><th>tokens</th><th>TFLOPs</th></tr>
{{range .Work}}<tr><td>{{.Peer}}</td><td>{{.Steps}}</td><td>{{.Microbatches}}</td><td>{{.Tokens}}</td><td>{{tflops .FLOPs}}</td></tr>
{{else}}<tr><td colspan="5">none yet</td></tr>{{end}}</table>
<h2>Errors</h2>
<table id="errors">{{range .ErrorList}}<tr><th>{{.Kind}}</th><td>{{.Count}}</td></tr>{{else}}<tr><td>none</td></tr>{{end}}</table>
<p><a href="/api/status">JSON</a> · <a href="/metrics">metrics</a> · {{.Time.Format "15:04:05"}} UTC</p>
</body></html>
`))
