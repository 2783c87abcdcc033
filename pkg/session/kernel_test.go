package session

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/report"
)

// kernelOracle is bpftrace counting the kmem tracepoints udstrace's kernel half reads, by pid and
// kernel stack, for the processes named comms: the kernel's own figures, taken independently.
type kernelOracle struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

// startKernelOracle starts bpftrace and waits until its probes are in place. It runs in a mount
// namespace of its own with tracefs mounted there (the tracepoints' ids live in tracefs, which
// this machine need not have mounted).
func startKernelOracle(t *testing.T, comms ...string) *kernelOracle {
	t.Helper()
	var conds []string
	for _, c := range comms {
		conds = append(conds, fmt.Sprintf("comm == %q", c))
	}
	return startBpftrace(t, `BEGIN { printf("ready\n"); }
tracepoint:kmem:kmalloc, tracepoint:kmem:kmem_cache_alloc, tracepoint:kmem:mm_page_alloc
/`+strings.Join(conds, " || ")+`/ { @[pid, kstack(64)] = count(); }`)
}

// startBpftrace starts bpftrace running prog (whose BEGIN prints "ready") and waits for it.
func startBpftrace(t *testing.T, prog string) *kernelOracle {
	t.Helper()
	script := `mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; ulimit -l unlimited; exec bpftrace -e "$0"`
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script, prog)
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting bpftrace: %v", err)
	}
	o := &kernelOracle{cmd: cmd, out: &bytes.Buffer{}}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(pipe)
		sc.Buffer(make([]byte, 0, 1<<16), 1<<24)
		first := true
		for sc.Scan() {
			if first && strings.TrimSpace(sc.Text()) == "ready" {
				ready <- true
				first = false
				continue
			}
			o.out.WriteString(sc.Text() + "\n")
		}
		close(ready)
	}()
	select {
	case ok := <-ready:
		if !ok {
			_ = cmd.Wait()
			t.Fatalf("bpftrace did not start: %s", stderr.String())
		}
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("bpftrace did not start in 60 s: %s", stderr.String())
	}
	return o
}

var oracleEntry = regexp.MustCompile(`(?s)@\[(\d+),\s*\n(.*?)\]: (\d+)`)

// stop ends bpftrace and returns its counts: pid -> stacks (frames joined by newlines) -> calls.
func (o *kernelOracle) stop(t *testing.T) map[uint32]map[string]uint64 {
	t.Helper()
	_ = o.cmd.Process.Signal(syscall.SIGINT)
	_ = o.cmd.Wait()
	out := map[uint32]map[string]uint64{}
	for _, m := range oracleEntry.FindAllStringSubmatch(o.out.String(), -1) {
		pid, _ := strconv.ParseUint(m[1], 10, 32)
		n, _ := strconv.ParseUint(m[3], 10, 64)
		if out[uint32(pid)] == nil {
			out[uint32(pid)] = map[string]uint64{}
		}
		out[uint32(pid)][m[2]] += n
	}
	if len(out) == 0 {
		t.Fatalf("bpftrace counted nothing:\n%s", o.out.String())
	}
	return out
}

// interruptFrames are the kernel's interrupt and softirq entry points: a stack through one of them
// is an interrupt's allocation, not the interrupted task's.
var interruptFrames = []string{"handle_softirqs", "__do_softirq", "irq_exit_rcu", "asm_common_interrupt", "asm_sysvec_", "net_rx_action"}

func hasFrame(stack string, names ...string) bool {
	for _, line := range strings.Split(stack, "\n") {
		fn := strings.TrimSpace(line)
		if i := strings.IndexByte(fn, '+'); i >= 0 {
			fn = fn[:i]
		}
		for _, n := range names {
			if fn == n || (strings.HasSuffix(n, "_") && strings.HasPrefix(fn, n)) {
				return true
			}
		}
	}
	return false
}

// TestKernelEchoWritePath: for every message written over AF_UNIX, udstrace's kernel half counts,
// per writing process, exactly the allocations bpftrace sees on the kmem tracepoints with
// unix_stream_sendmsg on the kernel stack (the skb head, its data, and a page of frags when the
// message does not fit the head: derived from the kernel's own figures, not a constant); every
// such site's stack has unix_stream_sendmsg, above the user stack of the write (write_all, main);
// none is outstanding at exit (the peer read it);
// and the raw client's user-space figures stay 0.
func TestKernelEchoWritePath(t *testing.T) {
	testenv.NeedRoot(t)
	for _, n := range []int{10, 100} {
		for _, size := range []int{100, 4000} {
			t.Run(fmt.Sprintf("messages=%d,size=%d", n, size), func(t *testing.T) { kernelEcho(t, n, size) })
		}
	}
}

func kernelEcho(t *testing.T, messages, size int) {
	oracle := startKernelOracle(t, "echo-server", "echo-client")
	opts := testOptions(t)
	opts.Workload, opts.Messages, opts.Size = "echo", messages, size // --kernel is on by default for echo
	rep, err := Run(context.Background(), opts)
	counts := oracle.stop(t)
	if err != nil {
		t.Fatal(err)
	}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		SocketPath struct {
			Kernel *report.SocketKernel `json:"kernel"`
		} `json:"socket_path"`
		KernelSites []report.KernelSite `json:"kernel_sites"`
	}
	if err := json.Unmarshal(js.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.SocketPath.Kernel == nil || len(doc.KernelSites) == 0 {
		t.Fatalf("no socket_path.kernel or kernel_sites in the JSON report")
	}
	sp := rep.SocketPath
	if len(sp.Processes) != 3 {
		t.Fatalf("socket path processes: %+v", sp.Processes)
	}
	for _, x := range sp.Processes {
		k := x.Kernel
		if k == nil {
			t.Fatalf("pid %d (%s): no kernel figures", x.PID, x.Role)
		}
		var want uint64
		for stack, c := range counts[x.PID] {
			if hasFrame(stack, "unix_stream_sendmsg") && !hasFrame(stack, "handle_mm_fault") && !hasFrame(stack, interruptFrames...) {
				want += c
			}
		}
		if want == 0 || k.WriteAllocations != want {
			t.Errorf("%s (pid %d): %d kernel allocations on the write path, bpftrace saw %d", x.Role, x.PID, k.WriteAllocations, want)
		}
		wantMsgs := uint64(messages)
		if x.Role == report.RoleServer {
			wantMsgs *= 2 // it echoes both clients
		}
		if k.Messages != wantMsgs || k.PerMessage != float64(want)/float64(wantMsgs) {
			t.Errorf("%s: messages %d per_message %v, want %d and %v", x.Role, k.Messages, k.PerMessage, wantMsgs, float64(want)/float64(wantMsgs))
		}
		if k.Outstanding != 0 {
			t.Errorf("%s: %d kernel allocations of its message calls outstanding at exit", x.Role, k.Outstanding)
		}
		t.Logf("%s pid %d: %d write-path kernel allocations (bpftrace %d), %.2f per message, %d B", x.Role, x.PID, k.WriteAllocations, want, k.PerMessage, k.WriteBytes)
	}
	for _, id := range sp.Kernel.Sites {
		s := rep.KernelSites[id-1]
		if s.SocketCall != "write" {
			continue
		}
		found := false
		for _, f := range s.Stack {
			found = found || (f.Function == "unix_stream_sendmsg" && f.Module == "vmlinux")
		}
		if !found {
			t.Errorf("kernel site #%d (%s %s) has no unix_stream_sendmsg: %+v", s.ID, s.Kind, s.Cache, s.Stack)
		}
		// Below the kernel frames: the user stack of the write that made them, for every call.
		var users uint64
		for _, u := range s.UserStacks {
			var names []string
			for _, f := range u.Stack {
				names = append(names, f.Function)
			}
			joined := " " + strings.Join(names, " ") + " "
			if !strings.Contains(joined, " write_all ") || !strings.Contains(joined, " main ") {
				t.Errorf("kernel site #%d: user stack %v lacks write_all or main", s.ID, names)
			}
			users += u.Count
		}
		if users != s.Count {
			t.Errorf("kernel site #%d: user stacks for %d of its %d calls", s.ID, users, s.Count)
		}
		for _, who := range s.FreedBy {
			if who.PID == s.PID && who.Context == "task" {
				t.Errorf("kernel site #%d: the writer freed its own message buffers: %+v", s.ID, s.FreedBy)
			}
		}
	}
	for _, x := range sp.Processes {
		if x.Role == report.RoleClientRaw && (x.UserAllocations != 0 || x.AllocsAfterFirstCall != 0) {
			t.Errorf("raw client: user-space figures %d / %d, want 0", x.UserAllocations, x.AllocsAfterFirstCall)
		}
	}
	var text strings.Builder
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text.String(), "KERNEL ALLOCATIONS") || !strings.Contains(text.String(), "[k] vmlinux!unix_stream_sendmsg+") ||
		!strings.Contains(sp.Conclusion, "per message written") {
		t.Errorf("text report lacks the kernel half:\n%s", text.String())
	}
}

// udpSpray sends datagrams to a closed port on loopback: the kernel answers each with an ICMP
// port-unreachable, allocated in the softirq that the send's own bottom-half enable runs, on the
// CPU and in the context of the sending task.
const udpSpray = `#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
int main(void) {
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(9) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	char b[64] = "x";
	for (int i = 0; i < 300; i++)
		sendto(fd, b, sizeof(b), 0, (struct sockaddr *)&a, sizeof(a));
	return 0;
}
`

// TestKernelInterruptNotBlamed: a traced process inside a syscall, on the CPU while softirqs run
// in its context, is not blamed for their allocations: bpftrace sees allocations with softirq
// frames under its pid; udstrace attributes none of them and counts them as left out.
func TestKernelInterruptNotBlamed(t *testing.T) {
	testenv.NeedRoot(t)
	bin := testenv.CompileC(t, "udpspray", udpSpray)
	oracle := startKernelOracle(t, "udpspray")
	opts := testOptions(t)
	opts.Command, opts.Kernel = []string{bin}, KernelOn
	rep, err := Run(context.Background(), opts)
	counts := oracle.stop(t)
	if err != nil {
		t.Fatal(err)
	}
	var pid uint32
	for _, p := range rep.Processes {
		if p.Comm == "udpspray" {
			pid = p.PID
		}
	}
	var inIRQ, own uint64
	for stack, c := range counts[pid] {
		if hasFrame(stack, interruptFrames...) {
			inIRQ += c
		} else {
			own += c
		}
	}
	if inIRQ == 0 {
		t.Fatalf("bpftrace saw no softirq allocation under pid %d: the test proves nothing (%d others)", pid, own)
	}
	var got uint64
	for _, s := range rep.KernelSites {
		if s.PID != pid {
			continue
		}
		got += s.Count
		for _, f := range s.Stack {
			if hasFrame(f.Function, interruptFrames...) {
				t.Errorf("kernel site #%d of pid %d is an interrupt's: %s", s.ID, pid, f.Symbol)
				break
			}
		}
	}
	if rep.Kernel == nil || rep.Kernel.InterruptLeftOut < inIRQ {
		t.Errorf("interrupt allocations left out: %+v, bpftrace saw %d under pid %d", rep.Kernel, inIRQ, pid)
	}
	// bpftrace goes on counting the process's exit after udstrace stops tracing it (at
	// sched_process_exit): at most as many, never more.
	if got == 0 || got > own {
		t.Errorf("udstrace attributed %d kernel allocations to pid %d; bpftrace saw %d outside interrupts", got, pid, own)
	}
	t.Logf("pid %d: %d own kernel allocations, %d in softirq left out (%d left out in all)", pid, got, inIRQ, rep.Kernel.InterruptLeftOut)
}
