package main

import (
	"context"
	"fmt"
)

func init() {
	cmdCheck.run = runCheck
	cmdDrop.run = runDrop
	cmdStats.run = runStats
	cmdList.run = runList
	cmdShow.run = runShow
	cmdMove.run = runMove
	cmdRequeue.run = runRequeue
	cmdPurge.run = runPurge
	cmdBackup.run = runBackup
	cmdCopy.run = runCopy
	cmdShape.run = runShape
	cmdServe.run = runServe
	commands = []*command{cmdStats, cmdList, cmdShow, cmdMove, cmdRequeue, cmdPurge, cmdCheck, cmdBackup, cmdCopy, cmdDrop, cmdShape, cmdServe, cmdBench}
}

// withStore opens the store of cf, runs fn and closes the store.
func withStore(ctx context.Context, c *command, cf *connFlags, acc access, fn func(s *store) error) error {
	s, err := openStoreCtx(ctx, c.name, cf, acc)
	if err != nil {
		return err
	}
	err = fn(s)
	if cerr := s.close(); cerr != nil && err == nil {
		err = fmt.Errorf("close: %w", cerr)
	}
	return err
}

// openStoreCtx is openStore that returns when ctx ends (an interrupt)
// even while the open waits for another process's lock, which the SQLite
// driver does without a context. Nothing has been written then; the open
// in flight is closed when it completes.
func openStoreCtx(ctx context.Context, cmd string, cf *connFlags, acc access) (*store, error) {
	type opened struct {
		s   *store
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		s, err := openStore(ctx, cmd, cf, acc)
		ch <- opened{s, err}
	}()
	select {
	case o := <-ch:
		return o.s, o.err
	case <-ctx.Done():
		go func() {
			if o := <-ch; o.s != nil {
				_ = o.s.close()
			}
		}()
		return nil, fmt.Errorf("open: %w", ctx.Err())
	}
}
