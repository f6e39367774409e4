import SockFlowCLI

SockflowCommand.run()
