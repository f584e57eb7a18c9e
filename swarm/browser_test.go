package swarm

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"swarmnode/internal/wait"
)

// TestStatusPageInBrowser loads a running node's status page in headless
// Chromium and checks the DOM the browser rendered: our peer id and a holders
// table listing both nodes. CI installs Debian's chromium; without it the
// test skips, saying so.
func TestStatusPageInBrowser(t *testing.T) {
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (apt-get install chromium); skipping the browser test")
	}
	a := startTestNode(t, testOptions(t, 0))
	ob := testOptions(t, 1)
	ob.Bootstrap = []string{a.Addrs()[0].String()}
	b := startTestNode(t, ob)
	b.Status().AddHistory(HistoryPoint{Step: 1, Loss: 5})
	b.Status().AddHistory(HistoryPoint{Step: 2, Loss: 4})
	wait.For(t, 3*time.Second, func() error {
		if len(b.DHT().Holders(0)) != 1 {
			return fmt.Errorf("b does not see a yet")
		}
		return nil
	})

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir="+t.TempDir(), "--dump-dom", b.StatusURL())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, out)
	}
	dom := string(out)
	if !strings.Contains(dom, `id="peer-id">`+b.ID().String()+"<") {
		t.Fatalf("rendered DOM lacks our peer id:\n%s", dom)
	}
	table := regexp.MustCompile(`(?s)<table id="holders">.*?</table>`).FindString(dom)
	if table == "" {
		t.Fatalf("rendered DOM lacks the holders table:\n%s", dom)
	}
	for _, want := range []string{`data-stage="0" data-peer="` + a.ID().String(), `data-stage="1" data-peer="` + b.ID().String(), `data-stage="2"`} {
		if !strings.Contains(table, want) {
			t.Errorf("holders table lacks %s:\n%s", want, table)
		}
	}
	if !strings.Contains(dom, `<svg id="loss-curve"`) || !strings.Contains(dom, "<polyline") {
		t.Errorf("rendered DOM lacks the loss curve")
	}
}
