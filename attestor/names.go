package attestor

import (
	"errors"
	"os/user"
	"strconv"
	"sync"
	"time"
)

// nameCache caches uid → user name and gid → group name lookups for a short while. Every
// attestation needs them, and os/user may parse /etc/passwd or go through NSS (LDAP, sssd)
// each time; a renamed user is picked up after the TTL.
type nameCache struct {
	ttl time.Duration
	now func() time.Time

	mu     sync.Mutex
	users  map[uint32]cachedName
	groups map[uint32]cachedName
}

type cachedName struct {
	name    string
	ok      bool
	expires time.Time
}

// maxCachedNames bounds each map: callers in user namespaces can present many distinct ids.
const maxCachedNames = 4096

func newNameCache(ttl time.Duration) *nameCache {
	return &nameCache{
		ttl:    ttl,
		now:    time.Now,
		users:  make(map[uint32]cachedName),
		groups: make(map[uint32]cachedName),
	}
}

// user returns uid's name; false when it has none (a uid without a passwd entry is normal,
// e.g. in containers) or the lookup failed.
func (c *nameCache) user(uid uint32) (string, bool) {
	return c.lookup(c.users, uid, func(id string) (string, error) {
		u, err := user.LookupId(id)
		if err != nil {
			return "", err
		}
		return u.Username, nil
	}, func(err error) bool { return errors.As(err, new(user.UnknownUserIdError)) })
}

func (c *nameCache) group(gid uint32) (string, bool) {
	return c.lookup(c.groups, gid, func(id string) (string, error) {
		g, err := user.LookupGroupId(id)
		if err != nil {
			return "", err
		}
		return g.Name, nil
	}, func(err error) bool { return errors.As(err, new(user.UnknownGroupIdError)) })
}

func (c *nameCache) lookup(m map[uint32]cachedName, id uint32, look func(string) (string, error), unknown func(error) bool) (string, bool) {
	now := c.now()
	c.mu.Lock()
	e, hit := m[id]
	c.mu.Unlock()
	if hit && now.Before(e.expires) {
		return e.name, e.ok
	}
	// The lookup runs without the lock: it may be slow (NSS), and two concurrent misses
	// doing it twice is harmless.
	name, err := look(strconv.FormatUint(uint64(id), 10))
	if err != nil && !unknown(err) {
		return "", false // transient failure: not cached
	}
	e = cachedName{name: name, ok: err == nil && name != "", expires: now.Add(c.ttl)}
	c.mu.Lock()
	if len(m) >= maxCachedNames {
		clear(m)
	}
	m[id] = e
	c.mu.Unlock()
	return e.name, e.ok
}
