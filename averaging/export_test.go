package averaging

// Helpers for the external tests (package averaging_test).
var (
	NewTestHost    = newHost
	ConnectAllForT = connectAll
)
