package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"berth/internal/controller"
	"berth/internal/registry"
	"berth/internal/store"
)

// imageGCOptions say when a server deletes from its registry the images
// nothing uses (internal/registry/gc.go).
type imageGCOptions struct {
	grace    time.Duration // 0: never
	interval time.Duration
}

func (o *imageGCOptions) addFlags(f *pflag.FlagSet) {
	f.DurationVar(&o.grace, "image-gc-grace", 24*time.Hour, "images of the registry that no app or instance uses are deleted once this long unpushed and unresolved (0: never)")
	f.DurationVar(&o.interval, "image-gc-interval", time.Hour, "how often the registry's unused images are collected")
}

func (o *imageGCOptions) check() error {
	if o.grace < 0 {
		return fmt.Errorf("--image-gc-grace: %s is negative (0 turns the collection off)", o.grace)
	}
	if o.grace > 0 && o.interval <= 0 {
		return fmt.Errorf("--image-gc-interval: %s is not a positive duration", o.interval)
	}
	return nil
}

// start runs the collection of reg until ctx ends, with the cluster's
// images in use from st; its events name the server.
func (o *imageGCOptions) start(ctx context.Context, reg *registry.Registry, st *store.Store, server string, log *slog.Logger) {
	if o.grace == 0 {
		return
	}
	go reg.RunGC(ctx, registry.GCConfig{
		Grace:    o.grace,
		Interval: o.interval,
		InUse:    controller.ImagesInUse(st),
		Record:   controller.ImageGCEvent[registry.GCResult](st, server),
		Log:      log.With("component", "image-gc"),
	})
}

// addImageRetentionFlag is the agent's --image-retention (berth agent, berth up).
func addImageRetentionFlag(f *pflag.FlagSet, d *time.Duration) {
	*d = 24 * time.Hour
	f.Var((*retention)(d), "image-retention", "images pulled through the pull cache that no container on the node has used for this long are removed (0: never)")
}

// retention is a duration flag that refuses a negative one.
type retention time.Duration

func (r *retention) String() string { return time.Duration(*r).String() }
func (r *retention) Type() string   { return "duration" }

func (r *retention) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if d < 0 {
		return fmt.Errorf("%s is negative (0 turns it off)", s)
	}
	*r = retention(d)
	return nil
}
