package launch

import (
	"fmt"
	"os/exec"
	"runtime"
	"syscall"
)

// pathArg, after helperArg, gives the file to exec, so that argv[0] stays what the user typed:
// programs read it (gcc finds its own tools and passes paths on to collect2 from it), and a run
// traced must behave as the same command run from a shell.
const pathArg = "__udstrace_path"

// noASLRArg, after helperArg, turns address space randomization off for the command, as gdb does.
const noASLRArg = "__udstrace_noaslr"

// addrNoRandomize is the kernel's ADDR_NO_RANDOMIZE personality flag.
const addrNoRandomize = 0x0040000

// helperCommand is what the helper is to exec, from the arguments Start gave it.
type helperCommand struct {
	argv   []string
	path   string // "" : argv[0] looked up in PATH
	pin    string
	noASLR bool
}

// parseHelperArgs reads the options Start put before the command line.
func parseHelperArgs(args []string) helperCommand {
	var c helperCommand
	for len(args) > 1 {
		switch {
		case args[0] == pinArg && len(args) > 2:
			c.pin, args = args[1], args[2:]
		case args[0] == pathArg && len(args) > 2:
			c.path, args = args[1], args[2:]
		case args[0] == noASLRArg:
			c.noASLR, args = true, args[1:]
		default:
			c.argv = args
			return c
		}
	}
	c.argv = args
	return c
}

// helperArgs is the helper's command line for argv with opts (see parseHelperArgs).
func helperArgs(argv []string, opts Options) []string {
	args := []string{helperArg}
	if opts.Pinned != nil {
		args = append(args, pinArg, opts.Pinned.arg())
	}
	if opts.Path != "" {
		args = append(args, pathArg, opts.Path)
	}
	if opts.NoASLR {
		args = append(args, noASLRArg)
	}
	return append(args, argv...)
}

// execCommand replaces the helper with the command.
func execCommand(c helperCommand, env []string) error {
	path := c.path
	if path == "" {
		var err error
		if path, err = exec.LookPath(c.argv[0]); err != nil {
			return err
		}
	}
	if c.pin != "" {
		if err := checkPinned(path, c.pin); err != nil {
			return err
		}
	}
	if c.noASLR {
		// The personality is the thread's, and kept across the exec this same thread makes.
		runtime.LockOSThread()
		cur, _, errno := syscall.Syscall(syscall.SYS_PERSONALITY, 0xffffffff, 0, 0)
		if errno == 0 {
			_, _, errno = syscall.Syscall(syscall.SYS_PERSONALITY, cur|addrNoRandomize, 0, 0)
		}
		if errno != 0 {
			return fmt.Errorf("turning address space randomization off: %w", errno)
		}
	}
	return syscall.Exec(path, c.argv, env)
}
