package symbolize

import (
	"strings"
	"sync"

	"github.com/ianlancetaylor/demangle"
)

// maxDemangleLen skips demangling absurdly long (likely hostile) names.
const maxDemangleLen = 4096

// maxDemangleCache bounds the memo so a long-running tracer cannot grow it forever.
const maxDemangleCache = 1 << 16

// demangleCache memoizes results; the same hot functions are looked up repeatedly.
var demangleCache = struct {
	sync.Mutex
	m map[string]string
}{m: map[string]string{}}

// demangleName demangles C++ (and Rust v0) names; C names pass through.
func demangleName(name string) string {
	if !strings.HasPrefix(name, "_Z") && !strings.HasPrefix(name, "_R") || len(name) > maxDemangleLen {
		return name
	}
	demangleCache.Lock()
	v, ok := demangleCache.m[name]
	demangleCache.Unlock()
	if ok {
		return v
	}
	out := name
	func() {
		defer func() { _ = recovered(recover()) }()
		if s, err := demangle.ToString(name); err == nil && s != "" {
			out = s
		}
	}()
	demangleCache.Lock()
	if len(demangleCache.m) >= maxDemangleCache {
		clear(demangleCache.m)
	}
	demangleCache.m[name] = out
	demangleCache.Unlock()
	return out
}
