pipeline {
    agent { label 'windows && dotnet-8' }
    stages {
        stage('Build') {
            steps { sh 'dotnet build' }
        }
        stage('Deploy') {
            agent { template 'kubernetes-deploy' }
            steps { sh 'helm upgrade --install app ./chart' }
        }
        stage('Pod') {
            agent {
                kubernetes {
                    yaml """
apiVersion: v1
kind: Pod
spec:
  containers:
  - name: build
    image: alpine:3.20
"""
                }
            }
            steps { sh 'true' }
        }
    }
}
