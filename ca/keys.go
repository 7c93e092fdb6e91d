package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"math/big"
)

// Key types accepted in Config.KeyType.
const (
	KeyTypeECP256  = "ec-p256"
	KeyTypeECP384  = "ec-p384"
	KeyTypeRSA2048 = "rsa-2048"
)

func validKeyType(kt string) bool {
	switch kt {
	case KeyTypeECP256, KeyTypeECP384, KeyTypeRSA2048:
		return true
	}
	return false
}

func generateKey(kt string) (crypto.Signer, error) {
	switch kt {
	case KeyTypeECP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyTypeECP384:
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case KeyTypeRSA2048:
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return nil, fmt.Errorf("unknown key type %q", kt)
}

// keyTypeOf names the key type of a public key, for status output.
func keyTypeOf(pub crypto.PublicKey) string {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return KeyTypeECP256
		case elliptic.P384():
			return KeyTypeECP384
		}
		return "ec-" + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("rsa-%d", k.N.BitLen())
	}
	return fmt.Sprintf("%T", pub)
}

var serialLimit = new(big.Int).Lsh(big.NewInt(1), 128)

// randomSerial returns a random positive 128-bit serial: unpredictable (the SPIFFE spec asks
// for random serials) and well under RFC 5280's 20-octet limit.
func randomSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, serialLimit)
		if err != nil {
			return nil, fmt.Errorf("generating serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}
