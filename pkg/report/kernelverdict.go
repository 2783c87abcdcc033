package report

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/udstrace/udstrace/pkg/event"
)

// SocketKernel is the kernel's half of the socket path for one process, or summed over the
// considered ones: JSON socket_path.kernel and socket_path.processes[].kernel.
type SocketKernel struct {
	// Allocations, Bytes: kernel allocations made by the process's AF_UNIX message calls (read,
	// write, send*, recv* on an AF_UNIX socket), bytes as allocated (slab slot, pages).
	Allocations uint64 `json:"allocations"`
	Bytes       uint64 `json:"bytes"`
	// WriteAllocations, WriteBytes: of those, made by the calls that write (write, send*).
	WriteAllocations uint64 `json:"write_allocations"`
	WriteBytes       uint64 `json:"write_bytes"`
	// Messages: messages the process wrote (the echo workload's; 0 when not known).
	Messages uint64 `json:"messages"`
	// PerMessage: WriteAllocations / Messages (0 when Messages is 0).
	PerMessage float64 `json:"per_message"`
	// Outstanding: of Allocations, the blocks still held when the process exited (or at the end).
	Outstanding uint64 `json:"outstanding"`
	// Page faults on the process's own memory taken inside these calls are not counted (UserFault).
	// SetupAllocations: kernel allocations of its other AF_UNIX socket calls (socket, connect,
	// accept, bind, listen, close), reported apart: the peer may hold them past its exit.
	SetupAllocations uint64 `json:"setup_allocations"`
	// Sites: the kernel_sites[] ids behind Allocations.
	Sites []int `json:"sites"`
}

func messageCall(c event.SocketCall) (message, write bool) {
	switch c {
	case event.SockWrite, event.SockSendto, event.SockSendmsg:
		return true, true
	case event.SockRead, event.SockRecvfrom, event.SockRecvmsg:
		return true, false
	}
	return false, false
}

// kernelVerdict completes the socket-path verdict with the kernel's half, once kernelReport ran.
func (b *Builder) kernelVerdict(r *Report, meta Meta) {
	sp := &r.SocketPath
	if r.Kernel == nil || !sp.Applies {
		return
	}
	clients := uint64(0)
	for _, x := range sp.Processes {
		if x.Role == RoleClientRaw || x.Role == RoleClientStdio {
			clients++
		}
	}
	total := &SocketKernel{Sites: []int{}}
	byPID := map[uint32]*SocketKernel{}
	for i := range sp.Processes {
		x := &sp.Processes[i]
		k := &SocketKernel{Sites: []int{}}
		if meta.Kernel != nil && meta.Kernel.Messages > 0 {
			switch x.Role {
			case RoleClientRaw, RoleClientStdio:
				k.Messages = uint64(meta.Kernel.Messages)
			case RoleServer:
				k.Messages = uint64(meta.Kernel.Messages) * clients
			}
		}
		x.Kernel = k
		byPID[x.PID] = k
	}
	for _, s := range r.KernelSites {
		k := byPID[s.PID]
		if k == nil || s.SocketCall == "" || s.UserFault {
			continue
		}
		call, _ := event.SocketCallByName(s.SocketCall)
		msg, write := messageCall(call)
		if !msg {
			k.SetupAllocations += s.Count
			continue
		}
		k.Allocations += s.Count
		k.Bytes += s.Bytes
		k.Outstanding += s.OutstandingAtExit
		if !r.procExited(s.PID) {
			k.Outstanding += s.OutstandingCount
		}
		if write {
			k.WriteAllocations += s.Count
			k.WriteBytes += s.Bytes
		}
		k.Sites = append(k.Sites, s.ID)
	}
	for _, x := range sp.Processes {
		k := x.Kernel
		if k.Messages > 0 {
			k.PerMessage = float64(k.WriteAllocations) / float64(k.Messages)
		}
		total.Allocations += k.Allocations
		total.Bytes += k.Bytes
		total.WriteAllocations += k.WriteAllocations
		total.WriteBytes += k.WriteBytes
		total.Messages += k.Messages
		total.Outstanding += k.Outstanding
		total.SetupAllocations += k.SetupAllocations
		total.Sites = append(total.Sites, k.Sites...)
	}
	if total.Messages > 0 {
		total.PerMessage = float64(total.WriteAllocations) / float64(total.Messages)
	}
	slices.Sort(total.Sites)
	sp.Kernel = total
	sp.Conclusion = strings.TrimSuffix(sp.Conclusion, ".") + "; " + kernelSentence(r, total) + "."
}

// kernelSentence is the conclusion's kernel half, from the figures.
func kernelSentence(r *Report, k *SocketKernel) string {
	if k.Allocations == 0 {
		return "in the kernel, the AF_UNIX message calls made no allocation in the tasks' own context"
	}
	var caches []string
	seen := map[string]bool{}
	hasSend := false
	for _, id := range k.Sites {
		s := r.KernelSites[id-1]
		name := s.Cache
		if name == "" {
			name = s.Kind
		}
		if !seen[name] {
			seen[name] = true
			caches = append(caches, name)
		}
		for _, f := range s.Stack {
			hasSend = hasSend || strings.HasPrefix(f.Function, "unix_") && strings.HasSuffix(f.Function, "sendmsg")
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "but the kernel made %s (%s) for them", plural(k.Allocations, "allocation"), bytesText(k.Bytes))
	if k.Messages > 0 {
		fmt.Fprintf(&b, ", %s per message written", perText(k.PerMessage))
	}
	fmt.Fprintf(&b, " (%s", joinAnd(caches))
	if hasSend {
		b.WriteString(", on unix_*_sendmsg")
	}
	fmt.Fprintf(&b, "), %d still held when their process exited", k.Outstanding)
	if k.Outstanding == 0 {
		b.WriteString(": the peer consumed them")
	}
	return b.String()
}

func perText(v float64) string {
	if v == float64(uint64(v)) {
		return fmt.Sprint(uint64(v))
	}
	return fmt.Sprintf("%.2f", v)
}

func (r *Report) procExited(pid uint32) bool {
	for _, p := range r.Processes {
		if p.PID == pid {
			return p.Exited
		}
	}
	return false
}

const maxKernelSites = 8

// kernelText writes the kernel half for a person: per process, then the top sites' stacks.
func (r *Report) kernelText(b *bytes.Buffer) {
	k := r.Kernel
	if k == nil {
		return
	}
	fmt.Fprintf(b, "\nKERNEL ALLOCATIONS (in the traced tasks' own context)\n")
	fmt.Fprintf(b, "%s (%s), %s, %s by another process or context, %s outstanding; %s in interrupt context left out",
		plural(k.Allocations, "allocation"), bytesText(k.Bytes), plural(k.Frees, "free"), commas(k.FreedByOther),
		commas(k.Outstanding), commas(k.InterruptLeftOut))
	if k.Untracked+k.NoStack+k.Lost > 0 {
		fmt.Fprintf(b, "; %s untracked, %s without a stack, %s lost", commas(k.Untracked), commas(k.NoStack), commas(k.Lost))
	}
	b.WriteString("\n")
	if sp := r.SocketPath.Kernel; sp != nil {
		tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "PID\tROLE\tUSER ALLOCS VIA SOCKET\tKERNEL ALLOCS (MESSAGE CALLS)\tBYTES\tWRITES' PER MESSAGE\tOUTSTANDING AT EXIT\tSETUP")
		for _, x := range r.SocketPath.Processes {
			if x.Kernel == nil {
				continue
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", x.PID, cmpOr(esc(string(x.Role)), "-"), commas(x.UserAllocations),
				commas(x.Kernel.Allocations), bytesText(x.Kernel.Bytes), perText(x.Kernel.PerMessage),
				commas(x.Kernel.Outstanding), commas(x.Kernel.SetupAllocations))
		}
		tw.Flush()
	}
	sites := slices.Clone(r.KernelSites)
	slices.SortStableFunc(sites, func(a, b KernelSite) int {
		if a.Count != b.Count {
			if a.Count > b.Count {
				return -1
			}
			return 1
		}
		return 0
	})
	for i, s := range sites {
		if i == maxKernelSites {
			fmt.Fprintf(b, "(%d more kernel sites in the JSON report)\n", len(sites)-i)
			break
		}
		what := s.Kind
		if s.Cache != "" {
			what += " " + esc(s.Cache)
		}
		in := s.Entry
		if s.SocketCall != "" {
			in = s.SocketCall + " on AF_UNIX"
		} else if s.Syscall >= 0 {
			in = fmt.Sprintf("syscall %d", s.Syscall)
		}
		fmt.Fprintf(b, "kernel site #%d  pid %d %s  %s  %s  %s  in %s  outstanding %s",
			s.ID, s.PID, esc(s.Comm), what, plural(s.Count, "call"), bytesText(s.Bytes), in, commas(s.OutstandingCount))
		var freers []string
		for _, f := range s.FreedBy {
			if f.Context == "task" {
				freers = append(freers, fmt.Sprintf("pid %d %s ×%d", f.PID, esc(f.Comm), f.Count))
			} else {
				freers = append(freers, fmt.Sprintf("%s ×%d", f.Context, f.Count))
			}
		}
		if len(freers) > 0 {
			fmt.Fprintf(b, "  freed by %s", strings.Join(freers, ", "))
		}
		b.WriteString("\n")
		for j, f := range s.Stack {
			if j == maxTextFrames {
				fmt.Fprintf(b, "    [k] ... %d more\n", len(s.Stack)-j)
				break
			}
			fmt.Fprintf(b, "    [k] %s\n", esc(f.Symbol))
		}
		if len(s.UserStacks) > 0 && len(s.UserStacks[0].Stack) > 0 { // the user stack most of its calls came from
			u := s.UserStacks[0]
			if len(s.UserStacks) > 1 || u.Count != s.Count {
				fmt.Fprintf(b, "    (user stack of %s of %s)\n", commas(u.Count), plural(s.Count, "call"))
			}
			for j := range u.Stack {
				if j == maxTextFrames {
					fmt.Fprintf(b, "    ... %d more\n", len(u.Stack)-j)
					break
				}
				fmt.Fprintf(b, "    %s\n", esc(frameText(&u.Stack[j])))
			}
		}
	}
}
