package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"berth/api"
	"berth/internal/scheduler"
)

func nodesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "nodes",
		Short: "List nodes: state, capacity, allocated, instances, last heartbeat",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			nodes, err := cl.ListNodes(cmd.Context())
			if err != nil {
				return err
			}
			insts, err := cl.ListInstances(cmd.Context(), clientFilterAll)
			if err != nil {
				return err
			}
			var placed []api.Instance
			count := map[string]int{}
			for _, inst := range insts.Items {
				if inst.Node != "" {
					placed = append(placed, inst)
					count[inst.Node]++
				}
			}
			alloc := scheduler.Allocated(placed)
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tADDRESS\tCPU (ALLOC/CAP)\tMEMORY (ALLOC/CAP)\tINSTANCES\tHEARTBEAT\tENGINE")
			for _, n := range nodes.Items {
				a := alloc[n.Name]
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s/%s\t%s/%s\t%d\t%s ago\tdocker %s\n", n.Name, n.State, n.Address,
					a.CPU, n.Capacity.CPU, a.Memory.Human(), n.Capacity.Memory.Human(), count[n.Name], age(n.Heartbeat), n.Engine)
			}
			return tw.Flush()
		},
	}
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
			fmt.Fprintf(tw, "cluster\t%s\n", st.Cluster)
			fmt.Fprintf(tw, "store\t%s (revision %d, %s)\n", st.Store, st.StoreRev, api.Bytes(st.StoreBytes).Human())
			fmt.Fprintf(tw, "apps\t%d\n", st.Apps)
			fmt.Fprintf(tw, "instances\t%d\n", st.Instances)
			fmt.Fprintf(tw, "nodes\t%d\n", st.Nodes)
			return tw.Flush()
		},
	}
}
