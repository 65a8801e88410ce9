"""Small pieces shared by the agent, the controller and meshctl."""
