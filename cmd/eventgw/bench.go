package main

import "fmt"

func bench(args []string) int {
	_ = args
	fmt.Println("bench: not built yet")
	return 2
}
