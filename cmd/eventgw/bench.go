package main

import (
	"os"

	"github.com/eventgw/eventgw/internal/bench"
)

func runBench(args []string) int { return bench.Main(args, os.Stdout) }
