package main

import _ "github.com/funtun/funtun/hooks/doctor"
