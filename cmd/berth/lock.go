package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// lockFile is the file in a data dir (or an agent's dir) that the berth
// process using it holds an flock on, with its pid inside. The kernel
// drops the lock when the process ends, however it ends.
const lockFile = "lock"

// lockDir takes dir for this process, creating it if needed. A dir in use
// by another berth fails at once, naming it and the other's pid, before
// anything in dir is read or written (what names the dir: "data dir").
// The lock is held until the process exits.
func lockDir(dir, what string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%s %s: %w", what, shownPath(dir), err)
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("%s %s: lock: %w", what, shownPath(dir), err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("%s %s is in use by berth (pid %s): stop that one first, or give this one another --data-dir", what, shownPath(dir), lockHolder(path))
		}
		return fmt.Errorf("%s %s: lock %s: %w", what, shownPath(dir), path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("%s %s: write %s: %w", what, shownPath(dir), path, err)
	}
	heldLocks = append(heldLocks, f) // open, hence locked, until exit
	return nil
}

var heldLocks []*os.File

// lockHolder reads the pid in a lock file; the holder writes it just
// after it locks, so an empty file is read again briefly.
func lockHolder(path string) string {
	for range 20 {
		b, err := os.ReadFile(path)
		if pid := strings.TrimSpace(string(b)); err == nil && pid != "" {
			return pid
		}
		time.Sleep(10 * time.Millisecond)
	}
	return "unknown"
}
