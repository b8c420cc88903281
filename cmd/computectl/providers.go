package main

// Providers compiled into computectl register themselves on import.
import ()
