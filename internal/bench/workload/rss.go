package workload

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
)

// startPeakRSS hands the memory of earlier runs back to the system, resets
// the process's peak resident memory and returns a function that reads the
// peak since then, in bytes. Where the system cannot reset or report it
// (Linux can: /proc/self/clear_refs and VmHWM), the function returns 0.
func startPeakRSS() func() int64 {
	runtime.GC()
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return func() int64 { return 0 }
	}
	return func() int64 {
		b, err := os.ReadFile("/proc/self/status")
		if err != nil {
			return 0
		}
		return parseHWM(b)
	}
}

// parseHWM reads the VmHWM line of /proc/self/status ("VmHWM:   1234 kB")
// in bytes; 0 when there is none.
func parseHWM(status []byte) int64 {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0
		}
		return kb << 10
	}
	return 0
}
