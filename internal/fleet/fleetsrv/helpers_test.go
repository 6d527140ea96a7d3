package fleetsrv_test

import (
	"crypto/ecdsa"
	"crypto/tls"
)

func tlsCert(der []byte, key *ecdsa.PrivateKey) tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
