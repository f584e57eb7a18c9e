package config

import (
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Most fields' rules are declared by a `check` tag beside the field, so that
// each kind of rule and its message are written once, here:
//
//	check:"positive"     greater than zero
//	check:"nonneg"       zero or more
//	check:"min=N"        N or more, N in the field's unit (1024, 2, 1s)
//	check:"in=[A, B]"    from A to B; a round bracket leaves its end out
//	check:"oneof=a|b|c"  one of the words
//	check:"nonempty"     a non-empty string
//
// Rules that relate fields to each other (train.batch a multiple of
// train.microbatch, say) stay in the sections' validate methods, which run
// checkFields first.

// checkFields checks the tagged fields of the section struct s, whose YAML
// key is section ("" for the top level), in field order, and returns the
// first broken rule.
func checkFields(section string, s any) error {
	v := reflect.ValueOf(s)
	for i := range v.NumField() {
		f := v.Type().Field(i)
		rule, ok := f.Tag.Lookup("check")
		if !ok {
			continue
		}
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if section != "" {
			name = section + "." + name
		}
		if err := checkField(name, v.Field(i), rule); err != nil {
			return err
		}
	}
	return nil
}

// checkField checks field's value v against one rule.
func checkField(field string, v reflect.Value, rule string) error {
	kind, arg, _ := strings.Cut(rule, "=")
	switch kind {
	case "nonempty":
		if v.String() == "" {
			return fieldErr(field, "must not be empty")
		}
	case "oneof":
		words := strings.Split(arg, "|")
		if !slices.Contains(words, v.String()) {
			return fieldErr(field, "%q: want %s or %s", v.String(), strings.Join(words[:len(words)-1], ", "), words[len(words)-1])
		}
	case "positive":
		if number(v) <= 0 {
			return fieldErr(field, "must be positive, got %v", v.Interface())
		}
	case "nonneg":
		if number(v) < 0 {
			return fieldErr(field, "must not be negative, got %v", v.Interface())
		}
	case "min":
		if number(v) < bound(v, arg) {
			return fieldErr(field, "must be at least %s, got %v", arg, v.Interface())
		}
	case "in":
		lo, hi, _ := strings.Cut(arg[1:len(arg)-1], ", ")
		x, a, b := number(v), bound(v, lo), bound(v, hi)
		if x < a || x > b || x == a && arg[0] == '(' || x == b && arg[len(arg)-1] == ')' {
			return fieldErr(field, "must be in %s, got %v", arg, v.Interface())
		}
	default:
		panic(fmt.Sprintf("config: field %s: unknown check %q", field, rule))
	}
	return nil
}

// number is a numeric field's value; a duration counts in nanoseconds.
func number(v reflect.Value) float64 {
	switch {
	case v.CanInt():
		return float64(v.Int())
	case v.CanUint():
		return float64(v.Uint())
	}
	return v.Float()
}

// bound parses a rule's bound in the unit of v: a duration for a duration field.
func bound(v reflect.Value, s string) float64 {
	if v.Type() == reflect.TypeFor[time.Duration]() {
		d, err := time.ParseDuration(s)
		if err != nil {
			panic(fmt.Sprintf("config: bad duration bound %q", s))
		}
		return float64(d)
	}
	x, err := strconv.ParseFloat(s, 64)
	if err != nil {
		panic(fmt.Sprintf("config: bad bound %q", s))
	}
	return x
}
