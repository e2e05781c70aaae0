package host

import "context"

// SecretResolver turns the uuid of a XenAPI secret into its value. xapi
// moves every device-config key ending in "password" into a secret and
// hands the plugin "<key>_secret" = uuid instead (spec §10.6).
type SecretResolver interface {
	Secret(ctx context.Context, uuid string) (string, error)
}
