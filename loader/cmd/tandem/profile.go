package main

import (
	"fmt"
	"os"
	"runtime/pprof"
	"time"
)

// profileEvery is how much CPU time one profile file covers.
const profileEvery = time.Second

// startProfiles writes CPU profiles to PREFIX.NNNN.pprof, one a second,
// when $TANDEM_CPUPROFILE is PREFIX: a developer's hook for the sync
// benchmarks, which SIGKILL their daemons (a single profile written at
// exit would be lost). `go tool pprof` merges the files of a window.
func startProfiles() {
	prefix := os.Getenv("TANDEM_CPUPROFILE")
	if prefix == "" {
		return
	}
	go func() {
		for i := 0; ; i++ {
			f, err := os.Create(fmt.Sprintf("%s.%04d.pprof", prefix, i))
			if err != nil {
				fmt.Fprintf(os.Stderr, "TANDEM_CPUPROFILE: %v\n", err)
				return
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				fmt.Fprintf(os.Stderr, "TANDEM_CPUPROFILE: %v\n", err)
				f.Close()
				return
			}
			time.Sleep(profileEvery)
			pprof.StopCPUProfile()
			f.Close()
		}
	}()
}
