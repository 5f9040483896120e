// Command tool is a stand-in extra program for the image builder's tests.
package main

import "fmt"

func main() { fmt.Println("tool") }
