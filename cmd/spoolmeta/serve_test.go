package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"schneider.vip/retryspool/storage/meta/sqlite/dashboard"
)

// served is a "spoolmeta serve" process.
type served struct {
	url    string // http://127.0.0.1:PORT or https://...
	stdout string // its first line
	mu     sync.Mutex
	stderr bytes.Buffer
}

func (s *served) errText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

func (s *served) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.Write(p)
}

var servingLine = regexp.MustCompile(`on (https?://[^/ ]+)/$`)

// serve starts the binary's serve with args and returns once it listens;
// it is stopped with SIGINT at the end of the test.
func serve(t *testing.T, args ...string) *served {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"serve"}, args...)...)
	s := &served{}
	cmd.Stderr = s
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(t, err, "serve printed no line; stderr: %s", s.errText())
	go func() { _, _ = io.Copy(io.Discard, out) }()
	s.stdout = strings.TrimSpace(line)
	m := servingLine.FindStringSubmatch(s.stdout)
	require.NotNil(t, m, s.stdout)
	s.url = m[1]
	return s
}

// webConfigFile writes a web config with users (name: password; hashed
// here at bcrypt's lowest cost) and extra YAML, and returns its path.
func webConfigFile(t *testing.T, users map[string]string, extra string) string {
	t.Helper()
	var b strings.Builder
	if len(users) > 0 {
		b.WriteString("basic_auth_users:\n")
		for u, p := range users {
			h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
			require.NoError(t, err)
			fmt.Fprintf(&b, "  %s: %s\n", u, h)
		}
	}
	b.WriteString(extra)
	path := filepath.Join(t.TempDir(), "web.yml")
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o600))
	return path
}

// request gets url with the Authorization header auth ("" for none).
func request(t *testing.T, c *http.Client, url, auth string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	require.NoError(t, err)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	res, err := c.Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res
}

func basic(user, password string) string {
	req, _ := http.NewRequest("GET", "/", nil)
	req.SetBasicAuth(user, password)
	return req.Header.Get("Authorization")
}

// servedPaths are every kind of path serve answers.
var servedPaths = []string{"/", "/static/app.js", "/static/style.css", "/api/stats", "/api/shape",
	"/api/messages?state=hold", "/api/message?id=hold-1", "/metrics"}

// checkAuth checks that every path wants the credentials of alice.
func checkAuth(t *testing.T, c *http.Client, base string) {
	t.Helper()
	for _, p := range servedPaths {
		for name, auth := range map[string]string{
			"no credentials":     "",
			"wrong password":     basic("alice", "wrong"),
			"unknown user":       basic("mallory", "s3cret"),
			"empty password":     basic("alice", ""),
			"not base64":         "Basic !!!not-base64!!!",
			"no colon":           "Basic YWxpY2U=", // "alice"
			"other scheme":       "Bearer s3cret",
			"scheme only":        "Basic",
			"password of bob":    basic("alice", "hunter2"),
			"user name of alice": basic("Alice", "s3cret"),
		} {
			res := request(t, c, base+p, auth)
			require.Equal(t, http.StatusUnauthorized, res.StatusCode, "%s %s", p, name)
			require.True(t, strings.HasPrefix(res.Header.Get("WWW-Authenticate"), "Basic"), "%s %s", p, name)
		}
		res := request(t, c, base+p, basic("alice", "s3cret"))
		require.Equal(t, http.StatusOK, res.StatusCode, p)
		res = request(t, c, base+p, basic("bob", "hunter2"))
		require.Equal(t, http.StatusOK, res.StatusCode, p)
	}
	// The security headers are on what the credentials open.
	res := request(t, c, base+"/", basic("alice", "s3cret"))
	require.Contains(t, res.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'")
	require.Equal(t, "nosniff", res.Header.Get("X-Content-Type-Options"))
	require.Equal(t, "no-referrer", res.Header.Get("Referrer-Policy"))
}

func TestServeBasicAuth(t *testing.T) {
	t.Parallel()
	cfg := webConfigFile(t, map[string]string{"alice": "s3cret", "bob": "hunter2"}, "")
	s := serve(t, "--db", seedFile(t), "--listen", "127.0.0.1:0", "--web-config", cfg)
	require.Contains(t, s.stdout, "basic authentication, 2 user(s)")
	require.True(t, strings.HasPrefix(s.url, "http://"))
	checkAuth(t, http.DefaultClient, s.url)
}

// selfSigned writes a certificate for 127.0.0.1 and its key into dir and
// returns the certificate.
func selfSigned(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "spoolmeta test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	kb, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "server.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "server.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600))
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert
}

func TestServeTLS(t *testing.T) {
	t.Parallel()
	cfg := webConfigFile(t, map[string]string{"alice": "s3cret", "bob": "hunter2"},
		"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
	cert := selfSigned(t, filepath.Dir(cfg)) // relative to the config file
	s := serve(t, "--db", seedFile(t), "--listen", "127.0.0.1:0", "--web-config", cfg)
	require.True(t, strings.HasPrefix(s.url, "https://"), s.stdout)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	checkAuth(t, c, s.url)

	// A client that does not trust the certificate gets no answer.
	_, err := http.Get(s.url + "/")
	require.ErrorContains(t, err, "certificate")
	// Plain HTTP to the TLS port is refused.
	res := request(t, http.DefaultClient, "http://"+strings.TrimPrefix(s.url, "https://")+"/", basic("alice", "s3cret"))
	require.Equal(t, http.StatusBadRequest, res.StatusCode)
}

// An address other than a loopback one is refused without users.
func TestServeRefusesExposure(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	noUsers := webConfigFile(t, nil, "http_server_config:\n  http2: false\n")
	for name, args := range map[string][]string{
		"no web config":        {"--listen", "0.0.0.0:0"},
		"no users":             {"--listen", "0.0.0.0:0", "--web-config", noUsers},
		"all addresses, no IP": {"--listen", ":0"},
	} {
		res := spool(t, append([]string{"serve", "--db", db}, args...)...)
		require.Equal(t, exitUsage, res.code, name)
		require.Contains(t, res.stderr, "refusing to serve", name)
		require.Contains(t, res.stderr, "--web-config FILE with basic_auth_users", name)
		require.Contains(t, res.stderr, "--insecure-no-auth", name)
		require.Empty(t, res.stdout, name)
	}

	// --insecure-no-auth serves, with a warning.
	s := serve(t, "--db", db, "--listen", "0.0.0.0:0", "--insecure-no-auth", "--allow-actions")
	_, port, err := net.SplitHostPort(strings.TrimPrefix(s.url, "http://"))
	require.NoError(t, err)
	res := request(t, http.DefaultClient, "http://127.0.0.1:"+port+"/api/stats", "")
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Contains(t, s.errText(), "WARNING: serving")
	require.Contains(t, s.errText(), "without authentication (--insecure-no-auth)")
	require.Contains(t, s.errText(), "move, requeue and purge")
}

func TestServeWebConfigErrors(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(text), 0o600))
		return p
	}
	users := webConfigFile(t, map[string]string{"alice": "s3cret"}, "")
	for name, c := range map[string]struct {
		args []string
		want string
	}{
		"missing file":     {[]string{"--web-config", filepath.Join(dir, "nosuch.yml")}, "no such file"},
		"not a hash":       {[]string{"--web-config", write("plain.yml", "basic_auth_users:\n  alice: s3cret\n")}, "--web-config"},
		"unknown field":    {[]string{"--web-config", write("field.yml", "basic_auth_user:\n  alice: x\n")}, "basic_auth_user"},
		"missing key file": {[]string{"--web-config", write("tls.yml", "tls_server_config:\n  cert_file: nosuch.crt\n")}, "key"},
		"insecure, users":  {[]string{"--web-config", users, "--insecure-no-auth"}, "cannot go with"},
		"short refresh":    {[]string{"--refresh", "100ms"}, "--refresh"},
	} {
		res := spool(t, append([]string{"serve", "--db", db, "--listen", "127.0.0.1:0"}, c.args...)...)
		require.Equal(t, exitUsage, res.code, name)
		require.Contains(t, res.stderr, c.want, name)
	}
}

// On a loopback address, a page reached through another Host name (DNS
// rebinding) is refused.
func TestServeLocalHostOnly(t *testing.T) {
	t.Parallel()
	s := serve(t, "--db", seedFile(t))
	require.Contains(t, s.stdout, "no authentication")
	req, _ := http.NewRequest("GET", s.url+"/api/stats", nil)
	req.Host = "attacker.example:80"
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusMisdirectedRequest, res.StatusCode)
	res = request(t, http.DefaultClient, s.url+"/api/stats", "")
	require.Equal(t, http.StatusOK, res.StatusCode)
}

func TestServeHTTPServerTimeouts(t *testing.T) {
	t.Parallel()
	hs := newHTTPServer(http.NotFoundHandler(), io.Discard)
	require.Positive(t, hs.ReadHeaderTimeout)
	require.Positive(t, hs.ReadTimeout)
	require.Positive(t, hs.WriteTimeout)
	require.Positive(t, hs.IdleTimeout)
	require.Positive(t, hs.MaxHeaderBytes)
	require.LessOrEqual(t, hs.ReadHeaderTimeout, hs.ReadTimeout)
}

func TestShapeCommand(t *testing.T) {
	t.Parallel()
	path := seedMany(t, 500)
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"shape", "--db", path, "deferred", "incoming"}, &out, &errb)
	require.Equal(t, exitOK, code, errb.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 5, out.String()) // header, two states, total, note
	require.Equal(t, []string{"STATE", "TOTAL", "5m", "10m", "20m", "40m", "80m", "160m", "320m", "more"}, strings.Fields(lines[0]))
	require.Equal(t, "deferred", strings.Fields(lines[1])[0])
	require.Equal(t, "290", strings.Fields(lines[1])[1]) // 58 of every 100
	require.Equal(t, "incoming", strings.Fields(lines[2])[0])
	require.Equal(t, "60", strings.Fields(lines[2])[1])
	require.Equal(t, []string{"total", "350"}, strings.Fields(lines[3])[:2])

	out.Reset()
	code = run(context.Background(), []string{"shape", "--db", path, "--json"}, &out, &errb)
	require.Equal(t, exitOK, code, errb.String())
	var js dashboard.ShapeTable
	require.NoError(t, json.Unmarshal(out.Bytes(), &js))
	require.Len(t, js.States, 6)
	require.EqualValues(t, 500, js.Total)

	code = run(context.Background(), []string{"shape", "--db", path, "nosuch"}, &out, &errb)
	require.Equal(t, exitUsage, code)
}
