package main

import (
	"fmt"
	"os"

	"github.com/prometheus/exporter-toolkit/web"
	"gopkg.in/yaml.v2"
)

// webConfig is what serve needs to know of its --web-config file before
// it serves; the exporter toolkit reads the file itself for every request.
type webConfig struct {
	users int  // basic_auth_users
	tls   bool // tls_server_config names a certificate
}

func (wc webConfig) scheme() string {
	if wc.tls {
		return "https"
	}
	return "http"
}

// loadWebConfig checks the file as the exporter toolkit does (the YAML,
// the bcrypt hashes, the certificate and key) and reads it.
func loadWebConfig(path string) (webConfig, error) {
	if path == "" {
		return webConfig{}, nil
	}
	if err := web.Validate(path); err != nil {
		return webConfig{}, fmt.Errorf("%s: %w", path, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return webConfig{}, err
	}
	var c web.Config
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return webConfig{}, fmt.Errorf("%s: %w", path, err)
	}
	return webConfig{users: len(c.Users), tls: c.TLSConfig.TLSCertPath != "" || c.TLSConfig.TLSCert != ""}, nil
}
