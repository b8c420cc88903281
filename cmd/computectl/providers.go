package main

// Providers compiled into computectl register themselves on import.
import (
	_ "github.com/compute-sdk/compute/provider/aws"
	_ "github.com/compute-sdk/compute/provider/local"
)
