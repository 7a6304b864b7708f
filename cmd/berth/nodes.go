package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"berth/api"
	"berth/internal/client"
)

func nodesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "nodes",
		Short: "List nodes: state, labels, cpu and memory allocated/capacity, instances, tasks, last heartbeat",
		Long: `List the nodes agents registered. STATE is ready, draining (berth node
drain: no new placements) or down (no heartbeat for the server's node TTL).
ALLOC/CAP is what the instances and running tasks placed on the node
reserve, against what its agent offers (the engine's CPUs and memory minus
the agent's --reserve-cpu/--reserve-memory).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			nodes, err := cl.ListNodes(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tADDRESS\tLABELS\tCPU (ALLOC/CAP)\tMEMORY (ALLOC/CAP)\tINSTANCES\tTASKS\tHEARTBEAT\tENGINE")
			for _, n := range nodes.Items {
				var a api.Capacity
				if n.Allocated != nil {
					a = *n.Allocated
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s/%s\t%s/%s\t%d\t%d\t%s ago\tdocker %s\n", n.Name, n.State, n.Address, labelList(n.Labels),
					a.CPU, n.Capacity.CPU, a.Memory.Human(), n.Capacity.Memory.Human(), n.Instances, n.Tasks, age(n.Heartbeat), n.Engine)
			}
			return tw.Flush()
		},
	}
}

// labelList is k=v,k=v in key order, or "-".
func labelList(labels map[string]string) string {
	if len(labels) == 0 {
		return "-"
	}
	keys := slices.Sorted(maps.Keys(labels))
	for i, k := range keys {
		keys[i] = k + "=" + labels[k]
	}
	return strings.Join(keys, ",")
}

func nodeCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Drain or activate a node",
	}
	set := func(use, short, long string, call func(cl *client.Client, ctx context.Context, name string) (api.Node, error)) *cobra.Command {
		return &cobra.Command{
			Use: use + " NAME", Short: short, Long: long, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				cl, err := g.client()
				if err != nil {
					return err
				}
				n, err := call(cl, cmd.Context(), args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "node %s: %s\n", n.Name, n.State)
				return nil
			},
		}
	}
	cmd.AddCommand(
		set("drain", "Place nothing new on a node and move its instances away, one at a time",
			`Mark the node draining: the scheduler places nothing new on it, and its
app instances move to other nodes one at a time (a replacement is placed
and becomes healthy, then the old instance stops with its grace period).
Running tasks finish where they are. Watch the moves with 'berth events'.`,
			(*client.Client).DrainNode),
		set("activate", "Let a drained node take placements again",
			`Undo a drain. Instances that moved away stay where they are now.`,
			(*client.Client).ActivateNode),
	)
	return cmd
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the server's and the store's health",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			st, err := cl.Status(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "server\t%s (version %s, up %s, leader %v)\n", cl.Addr(), st.Version, st.Uptime, st.Leader)
			if st.LeaderServer != "" && !st.Leader {
				fmt.Fprintf(tw, "leader\t%s\n", st.LeaderServer)
			}
			fmt.Fprintf(tw, "cluster\t%s\n", st.Cluster)
			fmt.Fprintf(tw, "store\t%s (revision %d, %s)\n", st.Store, st.StoreRev, api.Bytes(st.StoreBytes).Human())
			fmt.Fprintf(tw, "apps\t%d\n", st.Apps)
			fmt.Fprintf(tw, "instances\t%d\n", st.Instances)
			fmt.Fprintf(tw, "nodes\t%d\n", st.Nodes)
			return tw.Flush()
		},
	}
}
