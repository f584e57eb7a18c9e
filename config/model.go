package config

import (
	"errors"

	"swarmnode/model"
)

// DefaultModel is a tiny model that trains in minutes on two CPU cores.
func DefaultModel() model.Config {
	return model.Config{Vocab: 256, DModel: 64, NHead: 4, NLayer: 4, SeqLen: 64}
}

// sectionErr turns the model package's validation error into one naming the
// config field: section "model" and field "n_head" give "model.n_head".
func sectionErr(section string, err error) error {
	var fe *model.FieldError
	if errors.As(err, &fe) {
		return fieldErr(section+"."+fe.Field, "%s", fe.Msg)
	}
	return err
}
