package cli

import (
	"fmt"
	"strings"
	"time"
)

// ManPages renders tandem's help as man pages (section 8: tandem is run
// by root), so the installed pages say what --help says: "tandem.8" from
// the overview, "tandem-COMMAND.8" from each command's help. date is the
// pages' date (the package's build date).
func ManPages(date time.Time) map[string]string {
	day := date.UTC().Format("2006-01-02")
	out := map[string]string{}
	var see []string
	for _, n := range names() {
		see = append(see, fmt.Sprintf(".BR tandem\\-%s (8)", roffText(n)))
	}
	var b strings.Builder
	fmt.Fprintf(&b, ".TH TANDEM 8 %s \"tandem %s\" \"System Administration\"\n", day, roffText(Version))
	b.WriteString(".SH NAME\ntandem \\- load, pin and run the tandem gateway datapath\n")
	b.WriteString(".SH SYNOPSIS\n.B tandem\n.I COMMAND\n[flags] [args]\n")
	b.WriteString(".SH DESCRIPTION\n")
	b.WriteString(roffBlock(overview))
	b.WriteString(".SH SEE ALSO\n" + strings.Join(see, ",\n") + "\n")
	out["tandem.8"] = b.String()
	for _, n := range names() {
		c := commands[n]
		help := c.help()
		var b strings.Builder
		fmt.Fprintf(&b, ".TH TANDEM\\-%s 8 %s \"tandem %s\" \"System Administration\"\n", strings.ToUpper(roffText(n)), day, roffText(Version))
		fmt.Fprintf(&b, ".SH NAME\ntandem\\-%s \\- %s\n", roffText(n), roffText(c.summary))
		fmt.Fprintf(&b, ".SH SYNOPSIS\n.B tandem %s\n[flags]", roffText(n))
		if c.args != "" {
			fmt.Fprintf(&b, " %s", roffText(c.args))
		}
		b.WriteString("\n.SH DESCRIPTION\n")
		// The help without its first line (the summary is the NAME).
		_, rest, _ := strings.Cut(help, "\n")
		b.WriteString(roffBlock(rest))
		b.WriteString(".SH SEE ALSO\n.BR tandem (8)\n")
		out["tandem-"+n+".8"] = b.String()
	}
	return out
}

// roffBlock keeps text as --help lays it out (no filling: the flag table
// and the examples are aligned by spaces).
func roffBlock(s string) string {
	var b strings.Builder
	b.WriteString(".nf\n")
	for _, line := range strings.Split(strings.Trim(s, "\n"), "\n") {
		line = roffText(line)
		// A line starting with . or ' would be a request.
		if strings.HasPrefix(line, ".") || strings.HasPrefix(line, "'") {
			line = "\\&" + line
		}
		b.WriteString(line + "\n")
	}
	b.WriteString(".fi\n")
	return b.String()
}

// roffText escapes what roff would read as escapes or hyphens.
func roffText(s string) string {
	return strings.NewReplacer(`\`, `\e`, "-", `\-`).Replace(s)
}
