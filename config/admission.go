package config

// Admission says who may take part in the run.
type Admission struct {
	// Mode is open (anyone who knows the run id and a bootstrap address may
	// serve and train; robust averaging is what protects the run) or admitted
	// (only peers holding a certificate of the owner's: `swarmnode admit`).
	Mode string `yaml:"mode" check:"oneof=open|admitted"`
	// Owner is the run owner's peer id (`swarmnode id` of the owner's
	// identity): its key signs the certificates. Required when admitted.
	Owner string `yaml:"owner"`
	// Certificate is this peer's certificate file, needed to run in an
	// admitted run; `--certificate` overrides it (a config shared by all
	// peers leaves it out and each peer passes its own).
	Certificate string `yaml:"certificate"`
	// Revocations is the owner's revocation list file (`swarmnode revoke`):
	// read at start and every minute, and spread to the run's peers by
	// gossip. Optional: peers learn the list from each other.
	Revocations string `yaml:"revocations"`
	// NetworkKey is a libp2p private-network key file (`swarmnode
	// network-key`), in open and admitted runs alike: only hosts holding it
	// can connect at all, over TCP only. Optional.
	NetworkKey string `yaml:"network_key"`
}

// DefaultAdmission is an open run.
func DefaultAdmission() Admission { return Admission{Mode: "open"} }

func (a Admission) validate() error {
	if err := checkFields("admission", a); err != nil {
		return err
	}
	if a.Mode != "admitted" {
		return nil
	}
	if a.Owner == "" {
		return fieldErr("admission.owner", "must name the run owner's peer id when admission.mode is admitted")
	}
	return nil
}
