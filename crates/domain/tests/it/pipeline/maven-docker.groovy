#!/usr/bin/env groovy
// In the style of the Jenkins documentation: Docker agent, options, credentials, when, post.
pipeline {
    agent {
        docker {
            image 'maven:3.9.6-eclipse-temurin-17'
            args '-v $HOME/.m2:/root/.m2'
        }
    }
    options {
        buildDiscarder(logRotator(numToKeepStr: '10', artifactNumToKeepStr: '5'))
        timeout(time: 1, unit: 'HOURS')
        disableConcurrentBuilds()
        timestamps()
    }
    environment {
        MAVEN_OPTS = '-Xmx1g'
        AWS_CREDS = credentials('aws-key')
        VERSION = "1.0.${BUILD_NUMBER}"
    }
    stages {
        stage('Build') {
            steps {
                sh 'mvn -B -DskipTests clean package'
            }
        }
        stage('Test') {
            steps {
                sh 'mvn test'
            }
            post {
                always {
                    echo 'tests done'
                }
            }
        }
        stage('Deliver') {
            when {
                allOf {
                    branch 'main'
                    environment name: 'DEPLOY', value: 'true'
                }
            }
            steps {
                sh './jenkins/scripts/deliver.sh'
                sh """
                    echo "deploying ${VERSION}"
                    echo \$PATH
                """
            }
        }
    }
    post {
        success {
            echo 'Pipeline succeeded!'
        }
        failure {
            echo "Pipeline failed: ${env.JOB_NAME}"
        }
        cleanup {
            sh 'rm -rf target'
        }
    }
}
