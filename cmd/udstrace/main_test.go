package main

import (
	"os"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.RunMain(m)) }
