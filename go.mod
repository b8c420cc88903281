module github.com/compute-sdk/compute

go 1.26.0

require (
	go4.org/netipx v0.0.0-20260823151212-3075585bcbeb // indirect
	golang.org/x/crypto v0.59.0 // indirect
)
