package syncer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Default lives of tandem certs' certificates: the CA outlives many
// rounds of host certificates, so re-issuing a host's never means
// touching the other host.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultHostValidity = 365 * 24 * time.Hour
	// ExpiryWarning is how long before a certificate expires the
	// daemon starts warning about it.
	ExpiryWarning = 30 * 24 * time.Hour
)

// Certificate files in a certs directory: ca.pem and ca-key.pem for the
// pair's CA, NAME.pem and NAME-key.pem for each host.
func caFiles(dir string) (string, string) {
	return filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
}

// HostFiles names a host's certificate and key in dir.
func HostFiles(dir, name string) (cert, key string) {
	return filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
}

// writePEM writes path with mode whether or not it exists: os.WriteFile
// keeps an existing file's mode, and a key must never stay readable.
func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
	if err == nil {
		err = f.Chmod(mode) // the umask may have taken bits
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

// checkKeyMode refuses a private key that group or others can read or
// write, as ssh does: a key that leaked is no proof of anything.
func checkKeyMode(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if m := st.Mode().Perm(); m&0o077 != 0 {
		return fmt.Errorf("private key %s is open to group or others (mode %04o): chmod 600 %s", path, m, path)
	}
	return nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

// CertOptions are how MakeCerts issues.
type CertOptions struct {
	HostValidity time.Duration // default DefaultHostValidity
	CAValidity   time.Duration // for a new CA; default DefaultCAValidity
	NewCA        bool          // replace an existing CA (every host then needs new certificates)
}

// CertReport says what MakeCerts did.
type CertReport struct {
	CA         string    // ca.pem
	CACreated  bool      // a new CA (none was there, or NewCA)
	CAReplaced bool      // an existing CA was replaced
	CANotAfter time.Time // the CA's end of life
	Hosts      []HostCert
}

// HostCert is one issued host certificate.
type HostCert struct {
	Name, Cert, Key string
	NotAfter        time.Time
	Capped          bool // cut short to the CA's end of life
}

// MakeCerts is IssueCerts with host certificates valid for validity
// (and a CA, if it makes one, for DefaultCAValidity or as long).
func MakeCerts(dir string, hosts map[string][]net.IP, validity time.Duration) error {
	_, err := IssueCerts(dir, hosts, CertOptions{HostValidity: validity, CAValidity: max(validity, DefaultCAValidity)})
	return err
}

// IssueCerts creates, in dir, a CA for one pair (unless it is there, or
// o.NewCA) and a certificate for each host, valid for its name and
// addresses, signed by that CA. For labs and tests; production pairs
// bring their own PKI.
func IssueCerts(dir string, hosts map[string][]net.IP, o CertOptions) (*CertReport, error) {
	if o.HostValidity <= 0 {
		o.HostValidity = DefaultHostValidity
	}
	if o.CAValidity <= 0 {
		o.CAValidity = DefaultCAValidity
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caCert, caKeyFile := caFiles(dir)
	rep := &CertReport{CA: caCert}
	var ca *x509.Certificate
	var caKey *ecdsa.PrivateKey
	var err error
	if !o.NewCA {
		ca, caKey, err = loadCA(caCert, caKeyFile)
	}
	if o.NewCA || errors.Is(err, os.ErrNotExist) {
		_, serr := os.Stat(caCert)
		rep.CAReplaced = o.NewCA && serr == nil
		rep.CACreated = true
		ca, caKey, err = newCA(caCert, caKeyFile, o.CAValidity)
	}
	if err != nil {
		return nil, fmt.Errorf("pair CA in %s: %w", dir, err)
	}
	rep.CANotAfter = ca.NotAfter
	names := make([]string, 0, len(hosts))
	for name := range hosts {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		hc := HostCert{Name: name, NotAfter: time.Now().Add(o.HostValidity)}
		if hc.NotAfter.After(ca.NotAfter) {
			// A certificate cannot outlive its CA's signature.
			hc.NotAfter, hc.Capped = ca.NotAfter, true
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Minute), NotAfter: hc.NotAfter,
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			DNSNames:    []string{name}, IPAddresses: hosts[name],
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return nil, fmt.Errorf("certificate for %s: %w", name, err)
		}
		kder, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, err
		}
		hc.Cert, hc.Key = HostFiles(dir, name)
		if err := writePEM(hc.Key, "EC PRIVATE KEY", kder, 0o600); err != nil {
			return nil, err
		}
		if err := writePEM(hc.Cert, "CERTIFICATE", der, 0o644); err != nil {
			return nil, err
		}
		rep.Hosts = append(rep.Hosts, hc)
	}
	return rep, nil
}

func newCA(certFile, keyFile string, validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "tandem pair CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(validity),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	if err := writePEM(keyFile, "EC PRIVATE KEY", kder, 0o600); err != nil {
		return nil, nil, err
	}
	if err := writePEM(certFile, "CERTIFICATE", der, 0o644); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func loadCA(certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	if err := checkKeyMode(keyFile); err != nil {
		return nil, nil, err
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, errors.New("the CA key is not ECDSA")
	}
	return cert, key, nil
}

// PeerNameError is a peer whose certificate the pair's CA signed for a
// name other than the configured peer's.
type PeerNameError struct {
	Want string
	Got  []string
}

func (e *PeerNameError) Error() string {
	return fmt.Sprintf("peer certificate is for %s, not the configured peer %s", strings.Join(e.Got, ", "), e.Want)
}

// certNames are the names a certificate is for: its DNS names and its
// common name.
func certNames(c *x509.Certificate) []string {
	names := slices.Clone(c.DNSNames)
	if c.Subject.CommonName != "" && !slices.Contains(names, c.Subject.CommonName) {
		names = append(names, c.Subject.CommonName)
	}
	return names
}

// TLSConfig is the mutual TLS 1.3 configuration of host name: it
// presents its own certificate and accepts, in both directions, only a
// certificate that the pair's CA signed for peer (a DNS name or the
// common name, exactly). Any other certificate of the same CA, a third
// host's or this host's own, is refused with a *PeerNameError.
func TLSConfig(dir, name, peer string) (*tls.Config, error) {
	if peer == "" {
		return nil, errors.New("no peer name: name the peer's certificate (--sync-peer-name, [sync] peer_name)")
	}
	if peer == name {
		return nil, fmt.Errorf("peer name %s is this host's own name: name the other host's certificate", peer)
	}
	return tlsConfig(dir, name, func(names []string) error {
		if !slices.Contains(names, peer) {
			return &PeerNameError{Want: peer, Got: names}
		}
		return nil
	})
}

// ClientNameError is a client whose certificate the pair's CA signed
// for a name that is not among those allowed.
type ClientNameError struct {
	Allowed []string
	Got     []string
}

func (e *ClientNameError) Error() string {
	return fmt.Sprintf("client certificate is for %s, not one of the allowed %s", strings.Join(e.Got, ", "), strings.Join(e.Allowed, ", "))
}

// TLSConfigAllowing is the mutual TLS 1.3 configuration of a listener of
// host name that admits several clients: it presents name's certificate
// and accepts only a client certificate that the pair's CA signed for
// one of allowed (a DNS name or the common name, exactly); any other is
// refused with a *ClientNameError. The migration control listener uses
// it with the names of the hosts allowed to drive migrations.
func TLSConfigAllowing(dir, name string, allowed []string) (*tls.Config, error) {
	if len(allowed) == 0 {
		return nil, errors.New("no client is allowed: name the certificates of the hosts that may connect")
	}
	allowed = slices.Clone(allowed)
	return tlsConfig(dir, name, func(names []string) error {
		for _, n := range names {
			if slices.Contains(allowed, n) {
				return nil
			}
		}
		return &ClientNameError{Allowed: allowed, Got: names}
	})
}

// tlsConfig presents name's certificate, trusts only the pair's CA in
// both directions and hands the other end's certificate names to check.
func tlsConfig(dir, name string, check func(names []string) error) (*tls.Config, error) {
	cf, kf := HostFiles(dir, name)
	if err := checkKeyMode(kf); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(cf, kf)
	if err != nil {
		return nil, fmt.Errorf("host certificate %s: %w (create lab certificates with tandem certs)", cf, err)
	}
	caCert, _ := caFiles(dir)
	pem, err := os.ReadFile(caCert)
	if err != nil {
		return nil, fmt.Errorf("pair CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("pair CA %s: no certificate in it", caCert)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		// Runs after the chain is verified, on both ends: the CA may sign
		// for more hosts than this pair.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the peer presented no certificate")
			}
			return check(certNames(cs.PeerCertificates[0]))
		},
	}, nil
}

// PeerName is the peer's certificate name when none is configured: the
// one host certificate in dir other than name's, as tandem certs lays out
// a pair. With more or fewer, the peer must be named.
func PeerName(dir, name string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("certificates: %w", err)
	}
	var others []string
	for _, e := range ents {
		n := e.Name()
		host, ok := strings.CutSuffix(n, ".pem")
		if !ok || strings.HasSuffix(host, "-key") || host == "ca" || host == name {
			continue
		}
		others = append(others, host)
	}
	if len(others) != 1 {
		return "", fmt.Errorf("no peer name, and %s holds %d host certificates besides %s's (%s): name the peer's certificate with --sync-peer-name NAME ([sync] peer_name)",
			dir, len(others), name, strings.Join(others, ", "))
	}
	return others[0], nil
}

// CertExpiry is when host name's certificate and the pair's CA expire.
func CertExpiry(dir, name string) (host, ca time.Time, err error) {
	cf, _ := HostFiles(dir, name)
	caf, _ := caFiles(dir)
	read := func(path string) (time.Time, error) {
		data, err := os.ReadFile(path)
		if err != nil {
			return time.Time{}, err
		}
		b, _ := pem.Decode(data)
		if b == nil {
			return time.Time{}, fmt.Errorf("%s: no PEM certificate", path)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return time.Time{}, fmt.Errorf("%s: %w", path, err)
		}
		return c.NotAfter, nil
	}
	if host, err = read(cf); err != nil {
		return
	}
	ca, err = read(caf)
	return
}

// ExpiryWarnings are the warnings due at now about certificates that
// expire within ExpiryWarning (or have expired).
func ExpiryWarnings(now, host, ca time.Time) []string {
	var out []string
	for _, c := range []struct {
		what, fix string
		at        time.Time
	}{
		{"this host's sync certificate", "re-issue it with tandem certs (the CA stays)", host},
		{"the pair CA", "make a new one with tandem certs --new-ca and give both hosts new certificates", ca},
	} {
		if c.at.IsZero() {
			continue
		}
		left := c.at.Sub(now)
		switch {
		case left <= 0:
			out = append(out, fmt.Sprintf("%s expired on %s: the peers refuse each other; %s", c.what, c.at.Format(time.DateOnly), c.fix))
		case left < ExpiryWarning:
			out = append(out, fmt.Sprintf("%s expires on %s (%d days left): %s", c.what, c.at.Format(time.DateOnly), int(left.Hours()/24), c.fix))
		}
	}
	return out
}

// ClientTLSConfig is the mutual TLS 1.3 configuration of a client, host
// name, of a listener that checks client names (TLSConfigAllowing): it
// presents name's certificate and trusts only the pair's CA. The server
// is checked by the standard verification: the caller sets ServerName
// to the name or address it dials, which the server's certificate must
// list (tandem certs HOST=IP puts IP in it).
func ClientTLSConfig(dir, name string) (*tls.Config, error) {
	return tlsConfig(dir, name, func([]string) error { return nil })
}
