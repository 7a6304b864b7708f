package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"berth/api"
)

func tokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and remove API tokens (user, agent or gateway)",
		Long: `API tokens have a role. A user token may call everything but node
registration. An agent token may only register one node (the first it
registers binds it) and act for that node: 'berth agent --token-file F'.
A gateway token may only follow apps, instances and routes, wake idled apps
and report when apps were last used: 'berth gateway --token-file F'.

The server's own user token (<data-dir>/token) is not listed and cannot
be removed here. The server keeps only a hash of each token: a token is
shown once, when it is created.`,
	}
	cmd.AddCommand(tokenCreateCmd(g), tokenLsCmd(g), tokenRmCmd(g))
	return cmd
}

func tokenCreateCmd(g *globals) *cobra.Command {
	var req api.TokenRequest
	cmd := &cobra.Command{
		Use:   "create --role agent|gateway|user [--description TEXT]",
		Short: "Create a token and print it (only it, on stdout)",
		Example: `  berth token create --role agent --description "host n2" > agent-token
  berth agent --server http://10.0.0.1:7070 --token-file agent-token --node n2
  berth token create --role gateway --description "edge 1" > gateway-token
  berth gateway --server http://10.0.0.1:7070 --token-file gateway-token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			nt, err := cl.CreateToken(cmd.Context(), req)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), nt.Secret)
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Role, "role", "", "agent (registers one node and reports for it), gateway (routes requests: berth gateway) or user (everything else)")
	cmd.Flags().StringVar(&req.Description, "description", "", "what the token is for, shown by 'berth token ls'")
	_ = cmd.MarkFlagRequired("role")
	return cmd
}

func tokenLsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List tokens: id, role, bound node, age, description",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			l, err := cl.ListTokens(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tROLE\tNODE\tCREATED\tDESCRIPTION")
			for _, t := range l.Items {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s ago\t%s\n", t.ID, t.Role, orDash(t.Node), age(t.Created), t.Description)
			}
			return tw.Flush()
		},
	}
}

func tokenRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm ID...",
		Short: "Remove tokens: they stop working within seconds",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := g.client()
			if err != nil {
				return err
			}
			for _, id := range args {
				if err := cl.DeleteToken(cmd.Context(), id); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s removed\n", id)
			}
			return nil
		},
	}
}
