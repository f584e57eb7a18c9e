//go:build !race

package averaging_test

// raceBuild is true under -race.
const raceBuild = false
