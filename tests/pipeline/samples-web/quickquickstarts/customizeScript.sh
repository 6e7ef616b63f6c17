#!/bin/bash
# Stand-in for the AIB quick start's customizeScript.sh, served by the test's local HTTP server.
set -e
echo "Image Builder customizeScript.sh running on $(uname -n)"
sudo mkdir -p /buildScripts
echo "customizeScript ran" | sudo tee /buildScripts/customizeScript.done
