// Command hello is a stand-in init for the image builder's tests.
package main

import "fmt"

func main() { fmt.Println("hello from init") }
