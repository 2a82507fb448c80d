// Command mangen writes tandem's man pages, generated from the CLI's
// help, into a directory (make deb: usr/share/man/man8).
//
//	go run ./tools/mangen -out DIR [-date 2026-01-02]
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/tandem-net/tandem/loader/cli"
)

func main() {
	out := flag.String("out", "", "directory to write tandem.8 and tandem-COMMAND.8 into")
	date := flag.String("date", "", "the pages' date, YYYY-MM-DD (default: today; make deb passes the last commit's)")
	version := flag.String("version", "", "the version the pages name (default: the CLI's)")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "mangen: give -out DIR")
		os.Exit(2)
	}
	when := time.Now()
	if *date != "" {
		d, err := time.Parse("2006-01-02", *date)
		if err != nil {
			fmt.Fprintf(os.Stderr, "mangen: -date %q: want YYYY-MM-DD\n", *date)
			os.Exit(2)
		}
		when = d
	}
	if *version != "" {
		cli.Version = *version
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "mangen:", err)
		os.Exit(1)
	}
	for name, page := range cli.ManPages(when) {
		if err := os.WriteFile(filepath.Join(*out, name), []byte(page), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "mangen:", err)
			os.Exit(1)
		}
	}
}
