package session

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

// cxxSrc allocates through libstdc++'s operator new from a class, a string past the small-string
// buffer, a growing vector and a map node, with -O2 inlining the library's templates into the
// program's functions.
const cxxSrc = `#include <map>
#include <string>
#include <vector>

namespace shop {
struct Item {
	std::string name;
	std::vector<int> prices;
};

__attribute__((noinline)) Item *make_item(const char *name, int n)
{
	Item *it = new Item{name, {}};
	for (int i = 0; i < n; i++)
		it->prices.push_back(i * 3);
	return it;
}

template <typename K> __attribute__((noinline)) void index_items(std::map<K, Item *> &m, const K &k, Item *it)
{
	m[k] = it;
}
} // namespace shop

int main()
{
	std::map<std::string, shop::Item *> m;
	for (int i = 0; i < 3; i++) {
		shop::Item *it = shop::make_item("a fairly long item name past SSO", 5);
		shop::index_items(m, it->name + std::to_string(i), it);
	}
	for (auto &kv : m)
		delete kv.second;
	return 0;
}
`

// TestCxxStacksMatchGDB: a C++ program built with g++ -O2 allocates through operator new in
// libstdc++ (no frame pointers, CFI only); every malloc gdb sees under the program's own
// functions has a udstrace site with the same frames, inlined template frames included, in full
// and count mode.
func TestCxxStacksMatchGDB(t *testing.T) {
	testenv.NeedRoot(t)
	if _, err := exec.LookPath("g++"); err != nil {
		t.Fatal("g++ builds this test's program: install it (apt-get install g++)")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, bin := filepath.Join(dir, "shop.cc"), filepath.Join(dir, "shop")
	if err := os.WriteFile(src, []byte(cxxSrc), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("g++", "-O2", "-g", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("g++: %v\n%s", err, out)
	}
	var gdb []gdbStack
	for _, g := range gdbMallocStacks(t, []string{bin}) {
		all := strings.Join(g.names, " ")
		if strings.Contains(all, "make_item") || strings.Contains(all, "index_items") {
			gdb = append(gdb, g) // the program's own; libstdc++'s start-up pool has no main
		}
	}
	if len(gdb) < 4 {
		t.Fatalf("gdb saw %d mallocs under make_item or index_items, want the new, the string, the vector and the map node", len(gdb))
	}
	for _, mode := range stackModes {
		t.Run(mode, func(t *testing.T) {
			o := testOptions(t)
			o.Command, o.Mode = []string{bin}, mode
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			v, _ := decodeView(t, rep)
			checkAgainstGDB(t, v, v.Processes[0].PID, gdb)
			for _, g := range garbageFrames(rep) {
				t.Error(g)
			}
			if mode == "count" {
				checkCountSites(t, rep)
			}
		})
	}
}

func TestCxxBareName(t *testing.T) {
	for in, want := range map[string]string{
		"main":                        "main",
		"operator new(unsigned long)": "operator new",
		"void std::vector<int, std::allocator<int> >::_M_realloc_insert<int>(__gnu_cxx::__normal_iterator<int*, std::vector<int, std::allocator<int> > >, int&&)": "std::vector<int, std::allocator<int> >::_M_realloc_insert<int>",
		"std::vector<int, std::allocator<int> >::_M_realloc_insert<int>":                                                                                          "std::vector<int, std::allocator<int> >::_M_realloc_insert<int>",
		"shop::make_item(char const*, int)":              "shop::make_item",
		"Foo::operator()(int) const":                     "Foo::operator()",
		"(anonymous namespace)::helper(int)":             "(anonymous namespace)::helper",
		"std::map<K, V>::operator[](std::string const&)": "std::map<K, V>::operator[]",
	} {
		if got := cxxBareName(in); got != want {
			t.Errorf("cxxBareName(%q) = %q, want %q", in, got, want)
		}
	}
}
