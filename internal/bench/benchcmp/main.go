// Command benchcmp reads `go test -bench` output and prints, per benchmark
// that has "lib" and "floor" sub-benchmarks, the median ns/op of each and
// their ratio floor/lib: how many times the floor's time the library's
// speed is (above 1, the library is faster). Benchmarks with only one side
// are listed with that side alone. Other metrics (ops/s, msgs/s) are shown
// as medians of the library's runs.
//
// Usage:
//
//	go test -run '^$' -bench . -count 3 . | go run ./internal/bench/benchcmp
//	go run ./internal/bench/benchcmp [-md] bench.txt
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// procsSuffix is the -GOMAXPROCS suffix go test adds to names.
var procsSuffix = regexp.MustCompile(`-\d+$`)

// sample is one line of benchmark output.
type sample struct {
	name    string             // without the GOMAXPROCS suffix
	metrics map[string]float64 // unit -> value, e.g. "ns/op" -> 1234
}

// parseLine parses "BenchmarkX/y-2  1000  1234 ns/op  56 ops/s"; ok is
// false for any other line.
func parseLine(line string) (sample, bool) {
	f := strings.Fields(line)
	if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
		return sample{}, false
	}
	if _, err := strconv.ParseInt(f[1], 10, 64); err != nil {
		return sample{}, false
	}
	s := sample{name: procsSuffix.ReplaceAllString(f[0], ""), metrics: map[string]float64{}}
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return sample{}, false
		}
		s.metrics[f[i+1]] = v
	}
	if _, ok := s.metrics["ns/op"]; !ok {
		return sample{}, false
	}
	return s, true
}

// side tells which side a benchmark name is on: the base name and "lib",
// "floor", or "" when it is neither.
func side(name string) (string, string) {
	i := strings.LastIndexByte(name, '/')
	if i < 0 {
		return name, ""
	}
	switch last := name[i+1:]; last {
	case "lib", "floor":
		return name[:i], last
	}
	return name, ""
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// row is one benchmark of the report.
type row struct {
	name  string
	lib   map[string][]float64
	floor map[string][]float64
	other map[string][]float64 // neither lib nor floor
}

// Row of the report, computed.
type Row struct {
	Name             string
	LibNs, FloorNs   float64 // 0 when absent
	Ratio            float64 // FloorNs / LibNs, 0 when either is absent
	Runs             int     // samples behind the library's (or the only) median
	Rate, RateFloor  float64 // median of ops/s or msgs/s
	RateUnit         string
	OtherNs          float64 // a benchmark with neither side
	HasLib, HasFloor bool
}

// Parse reads benchmark output and returns the report rows in order of
// first appearance.
func Parse(r io.Reader) ([]Row, error) {
	rows := map[string]*row{}
	var order []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1024*1024), 1024*1024)
	for sc.Scan() {
		s, ok := parseLine(sc.Text())
		if !ok {
			continue
		}
		base, which := side(s.name)
		rw := rows[base]
		if rw == nil {
			rw = &row{name: base, lib: map[string][]float64{}, floor: map[string][]float64{}, other: map[string][]float64{}}
			rows[base] = rw
			order = append(order, base)
		}
		dst := rw.other
		switch which {
		case "lib":
			dst = rw.lib
		case "floor":
			dst = rw.floor
		}
		for unit, v := range s.metrics {
			dst[unit] = append(dst[unit], v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	out := make([]Row, 0, len(order))
	for _, name := range order {
		rw := rows[name]
		r := Row{Name: strings.TrimPrefix(name, "Benchmark")}
		r.HasLib, r.HasFloor = len(rw.lib["ns/op"]) > 0, len(rw.floor["ns/op"]) > 0
		r.LibNs, r.FloorNs = median(rw.lib["ns/op"]), median(rw.floor["ns/op"])
		r.OtherNs = median(rw.other["ns/op"])
		r.Runs = max(len(rw.lib["ns/op"]), len(rw.other["ns/op"]), len(rw.floor["ns/op"]))
		if r.HasLib && r.HasFloor && r.LibNs > 0 {
			r.Ratio = r.FloorNs / r.LibNs
		}
		for _, unit := range []string{"msgs/s", "ops/s"} {
			lib, other, floor := rw.lib[unit], rw.other[unit], rw.floor[unit]
			if len(lib)+len(other)+len(floor) == 0 {
				continue
			}
			r.RateUnit = unit
			r.Rate = median(append(lib, other...))
			r.RateFloor = median(floor)
			break
		}
		out = append(out, r)
	}
	return out, nil
}

func ns(v float64, ok bool) string {
	if !ok {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func rate(v float64, unit string) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + " " + unit
}

// Write prints the rows as an aligned table, or as a Markdown table.
func Write(w io.Writer, rows []Row, markdown bool) error {
	header := []string{"benchmark", "lib ns/op", "floor ns/op", "floor/lib", "lib rate", "floor rate", "runs"}
	lines := [][]string{}
	for _, r := range rows {
		libNs, hasLib := r.LibNs, r.HasLib
		if !r.HasLib && !r.HasFloor {
			libNs, hasLib = r.OtherNs, true
		}
		ratio := "-"
		if r.Ratio > 0 {
			ratio = strconv.FormatFloat(r.Ratio, 'f', 2, 64) + "x"
		}
		lines = append(lines, []string{
			r.Name, ns(libNs, hasLib), ns(r.FloorNs, r.HasFloor), ratio,
			rate(r.Rate, r.RateUnit), rate(r.RateFloor, r.RateUnit), strconv.Itoa(r.Runs),
		})
	}
	if markdown {
		fmt.Fprintln(w, "| "+strings.Join(header, " | ")+" |")
		fmt.Fprintln(w, "|"+strings.Repeat(" --- |", len(header)))
		for _, l := range lines {
			if _, err := fmt.Fprintln(w, "| "+strings.Join(l, " | ")+" |"); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t")+"\t")
	for _, l := range lines {
		fmt.Fprintln(tw, strings.Join(l, "\t")+"\t")
	}
	return tw.Flush()
}

func main() {
	md := flag.Bool("md", false, "print a Markdown table")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: benchcmp [-md] [file]   (reads standard input without a file)")
		flag.PrintDefaults()
	}
	flag.Parse()
	in := io.Reader(os.Stdin)
	if flag.NArg() > 1 {
		flag.Usage()
		os.Exit(2)
	}
	if flag.NArg() == 1 {
		f, err := os.Open(flag.Arg(0))
		if err != nil {
			fmt.Fprintln(os.Stderr, "benchcmp:", err)
			os.Exit(1)
		}
		defer f.Close()
		in = f
	}
	rows, err := Parse(in)
	if err == nil && len(rows) == 0 {
		err = fmt.Errorf("no benchmark results in the input")
	}
	if err == nil {
		err = Write(os.Stdout, rows, *md)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchcmp:", err)
		os.Exit(1)
	}
}
